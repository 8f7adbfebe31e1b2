"""One axis's options as a list: arrows move the highlight (and past either end, to the next
axis), Enter picks, and a list without focus shows no stale highlight (issue 14.8)."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import OptionList


class AxisList(OptionList):
    class Chosen(Message):
        """An option picked for the next run: `axis` is a catalogue axis, or "tp"."""

        def __init__(self, axis: str, name: str) -> None:
            super().__init__()
            self.axis = axis
            self.name = name

    def set_enabled(self, option_id: str, enabled: bool) -> None:
        """Enable or disable an option only when that changes: Textual's enable_option on the
        highlighted option moves the highlight to the next one, so a redraw that re-enabled every
        option walked the cursor away under the user's Enter (issue 14.8)."""
        if self.get_option(option_id).disabled == enabled:
            (self.enable_option if enabled else self.disable_option)(option_id)

    def on_focus(self) -> None:
        if self.highlighted is None and self.option_count:
            self.action_first()

    def on_blur(self) -> None:
        self.highlighted = None

    def on_key(self, event: events.Key) -> None:
        enabled = [i for i in range(self.option_count) if not self.get_option_at_index(i).disabled]
        at = self.highlighted
        if event.key == "down" and (not enabled or at is None or at >= enabled[-1]):
            event.stop()
            self.screen.focus_next()
        elif event.key == "up" and (not enabled or at is None or at <= enabled[0]):
            event.stop()
            self.screen.focus_previous()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        axis, _, name = (event.option_id or "").partition("=")
        if name:
            self.post_message(self.Chosen(axis, name))
