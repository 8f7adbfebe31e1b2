"""Run settings: prompt, batch, synthetic prompt length, max new tokens, sampling; for the next run."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from rich.text import Text
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Static, Switch

from llmtop.engine.protocol import Generate

from ..state import PROMPT_SET
from .base import palette


@dataclass
class RunSettings(Generate):
    """What the next Generate asks for: a Generate (so the request's fields are listed once, in
    the protocol) whose prompt None means: loop over the prompt set, and whose `chat` sends the
    prompt as a user message through the chat template."""

    chat: bool = False

    @classmethod
    def from_request(cls, req: Generate, default_prompt: str) -> "RunSettings":
        prompt = req.prompt
        chat = False
        if req.messages:
            prompt, chat = req.messages[-1].get("content", ""), True
        if prompt == default_prompt:
            prompt = None   # the study's prompt is the first of the prompt set
        # per-run fields are the loop's to set: a profile is asked for with a key, not every run
        return cls(**{**_request_fields(req), "run_id": 0, "prompt": prompt, "messages": None,
                      "profile_steps": 0}, chat=chat)

    def request(self, run_id: int, index: int) -> Generate:
        """The Generate for run `run_id`; `index` picks from the prompt set."""
        if self.prompt_len:
            prompt, messages = None, None
        else:
            prompt = self.prompt if self.prompt else PROMPT_SET[index % len(PROMPT_SET)]
            messages = None
            if self.chat:
                messages, prompt = [{"role": "user", "content": prompt}], None
        return Generate(**{**_request_fields(self), "run_id": run_id, "prompt": prompt,
                           "messages": messages, "seed": self.seed + (run_id if self.sample else 0)})

    def with_field(self, name: str, raw: str | bool) -> "RunSettings":
        """A copy with one field parsed from the form; ValueError (one line) if it is invalid."""
        if name == "prompt":
            return replace(self, prompt=str(raw).strip() or None)
        if name == "sample":
            return replace(self, sample=bool(raw))
        if name in ("batch", "max_new_tokens", "prompt_len"):
            text = str(raw).strip()
            if name == "prompt_len" and not text:
                return replace(self, prompt_len=None)
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{name.replace('_', ' ')} must be a whole number") from None
            if value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
            return replace(self, **{name: value})
        if name in ("temperature", "top_p"):
            try:
                value = float(str(raw).strip())
            except ValueError:
                raise ValueError(f"{name} must be a number") from None
            if value <= 0 or (name == "top_p" and value > 1):
                raise ValueError(f"{name} must be in (0, {'1' if name == 'top_p' else '∞'})")
            return replace(self, **{name: value})
        raise ValueError(f"unknown setting {name}")


def _request_fields(req: Generate) -> dict:
    return {f.name: getattr(req, f.name) for f in fields(Generate)}


FIELDS = (
    ("prompt", "prompt", "empty: loop over the built-in prompt set"),
    ("batch", "batch size", "requests per decode step"),
    ("prompt_len", "prompt length", "empty: the text prompt; N: N random tokens (synthetic)"),
    ("max_new_tokens", "max new tokens", ""),
    ("temperature", "temperature", "with sampling on"),
    ("top_p", "top-p", "with sampling on"),
)


class RunSettingsPanel(VerticalScroll):
    DEFAULT_CSS = """
    RunSettingsPanel { height: 1fr; padding: 0 1; }
    RunSettingsPanel Label { margin-top: 1; color: $primary; text-style: bold; }
    RunSettingsPanel Input { width: 1fr; }
    RunSettingsPanel Horizontal { height: auto; margin-top: 1; }
    RunSettingsPanel Horizontal Label { margin: 1 1 0 0; }
    RunSettingsPanel #settings-status { margin-top: 1; height: auto; }
    """

    def compose(self):
        s: RunSettings = self.app.settings
        values = {"prompt": s.prompt or "", "batch": str(s.batch),
                  "prompt_len": str(s.prompt_len or ""), "max_new_tokens": str(s.max_new_tokens),
                  "temperature": str(s.temperature), "top_p": str(s.top_p)}
        for name, label, hint in FIELDS:
            yield Label(label)
            yield Input(values[name], placeholder=hint, id=f"set-{name}",
                        type="text" if name == "prompt" else
                        "integer" if name in ("batch", "max_new_tokens", "prompt_len") else "number")
        with Horizontal():
            yield Label("sampling")
            yield Switch(s.sample, id="set-sample")
        yield Static(id="settings-status")

    def on_mount(self) -> None:
        self.show("changes apply from the next run", error=False)

    def show(self, message: str, error: bool) -> None:
        v = palette(self.app)
        self.query_one("#settings-status", Static).update(
            Text(message, style=v["error"] if error else "dim"))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._apply(event.input.id[4:], event.value)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._apply("sample", event.value)

    def _apply(self, name: str, value) -> None:
        try:
            self.app.settings = self.app.settings.with_field(name, value)
        except ValueError as e:
            self.show(str(e), error=True)
            return
        self.show("changes apply from the next run", error=False)
        self.app.refresh_header()
