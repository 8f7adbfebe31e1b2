"""The key line at the bottom: the App's shown bindings, `? Help` always among the first.

Textual's Footer recomposes its key widgets on every focus or screen change and, in Textual
8.2, the old ones stay referenced: a 20-minute soak grew the UI by ~2 MB a minute with the
command palette opening every 30 s (issue 14.10). This one is a single line of text, drawn
again when the width or the focus changes. While an input field has focus it says which keys
still act there (issue 14.2).
"""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Input

from .base import palette

TYPING = (("enter", "apply the field"), ("tab", "next field"), ("esc", "leave it"),
          ("ctrl+c", "quit"), ("f1", "help"))


class KeyFooter(Widget):
    DEFAULT_CSS = """
    KeyFooter { dock: bottom; height: 1; background: $panel; }
    """

    def on_mount(self) -> None:
        self.watch(self.screen, "focused", lambda _: self.refresh(), init=False)

    def pairs(self) -> list[tuple[str, str]]:
        app = self.app
        if isinstance(app.focused, Input):
            return list(TYPING)
        # a binding of several keys ("question_mark,f1") shows its first, as "?"
        return [(app.get_key_display(replace(b, key=b.key.split(",")[0])), b.description)
                for b in app.key_bindings() if b.show]

    def render(self) -> Text:
        v = palette(self.app)
        width = self.size.width or 80
        right = Text(" ^p palette ", style=v.get("foreground-muted", v["foreground"]))
        line = Text(no_wrap=True, overflow="crop")
        for key, what in self.pairs():
            piece = len(key) + len(what) + 3
            if line.cell_len + piece > width - right.cell_len:
                break
            line.append(f" {key} ", style=f"bold {v['accent']}")
            line.append(f"{what} ")
        line.append(" " * max(0, width - line.cell_len - right.cell_len))
        line.append_text(right)
        return line
