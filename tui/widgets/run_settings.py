"""Run settings: prompt, batch, synthetic prompt length, max new tokens, sampling, chat template;
for the next run.

A field applies when Enter submits it (not per keystroke: a half-typed prompt is no run); a
switch applies when flipped. The panel posts RunSettingsPanel.Changed; the App hands it to the
model. RunSettings itself is plain Python (tui/requests.py).
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static, Switch

from ..requests import RunSettings
from .base import palette

FIELDS = (
    ("prompt", "prompt  (/ to type, Enter runs it)", "empty: loop over the built-in prompt set"),
    ("batch", "batch size", "requests per decode step"),
    ("prompt_len", "prompt length", "empty: the text prompt; N: N random tokens (synthetic)"),
    ("max_new_tokens", "max new tokens", ""),
    ("temperature", "temperature", "with sampling on"),
    ("top_p", "top-p", "with sampling on"),
)
SWITCHES = (("sample", "sampling"), ("chat", "chat template (off: raw text)"))
HINT = "Enter applies a field from the next run · Esc leaves it"


class RunSettingsPanel(VerticalScroll, can_focus=False):
    DEFAULT_CSS = """
    RunSettingsPanel { height: 1fr; padding: 0 1; }
    RunSettingsPanel Label { margin-top: 1; color: $primary; text-style: bold; }
    RunSettingsPanel Input { width: 1fr; }
    RunSettingsPanel Horizontal { height: auto; margin-top: 1; }
    RunSettingsPanel Horizontal Label { margin: 1 1 0 0; }
    RunSettingsPanel #settings-status { margin-top: 1; height: auto; }
    """

    class Changed(Message):
        def __init__(self, settings: RunSettings, submitted: bool) -> None:
            super().__init__()
            self.settings = settings
            self.submitted = submitted   # Enter in a field (the App then leaves the field)

    def compose(self):
        s: RunSettings = self.app.model.settings
        values = {"prompt": s.prompt or "", "batch": str(s.batch),
                  "prompt_len": str(s.prompt_len or ""), "max_new_tokens": str(s.max_new_tokens),
                  "temperature": str(s.temperature), "top_p": str(s.top_p)}
        for name, label, hint in FIELDS:
            yield Label(label)
            yield Input(values[name], placeholder=hint, id=f"set-{name}",
                        type="text" if name == "prompt" else
                        "integer" if name in ("batch", "max_new_tokens", "prompt_len") else "number")
        for name, label in SWITCHES:
            with Horizontal():
                yield Label(label)
                yield Switch(getattr(s, name), id=f"set-{name}")
        yield Static(id="settings-status")

    def on_mount(self) -> None:
        self.show(HINT, error=False)

    def show(self, message: str, error: bool) -> None:
        v = palette(self.app)
        self.query_one("#settings-status", Static).update(
            Text(message, style=v["error"] if error else "dim"))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.show(HINT, error=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._apply(event.input.id[4:], event.value, submitted=True)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._apply(event.switch.id[4:], event.value, submitted=False)

    def _apply(self, name: str, value, submitted: bool) -> None:
        try:
            settings = self.app.model.settings.with_field(name, value)
        except ValueError as e:
            self.show(str(e), error=True)
            return
        self.show(f"{name.replace('_', ' ')}: applies from the next run", error=False)
        self.post_message(self.Changed(settings, submitted))
