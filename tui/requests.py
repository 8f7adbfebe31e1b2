"""What the next run asks for (RunSettings), and whether a prompt goes through the model's chat
template by default. Plain Python (no Textual, no torch): the dashboard's model, its run
settings panel and `llmtop run` share it, so the dashboard and the command line treat a
prompt alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from llmtop.engine.protocol import MAX_TEMPERATURE, Generate

# The study's prompt first; the engine loops over these unless the user gives a prompt.
PROMPT_SET: tuple[str, ...] = (
    "The largest continent is",
    "The three primary colors are",
    "Water boils at sea level at a temperature of",
    "The theory of relativity was developed by",
    "A good way to learn a new programming language is",
)


def has_chat_template(model: str) -> bool:
    """Whether the model's tokenizer ships a chat template (an instruct model): its prompts then
    go in as a user message by default. Read from the files (torch-free); the embedded model
    (SmolLM2-135M-Instruct) has one, synthetic models have no tokenizer."""
    from llmtop.engine import spec

    try:
        found = spec.resolve(model)
    except spec.ModelSpecError:
        return False
    if found.kind == "embedded":
        return True
    if found.kind != "hf_dir":
        return False
    folder = Path(found.source)
    if (folder / "chat_template.jinja").exists():
        return True
    try:
        return "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False


def wants_chat(model: str, chat: bool = False, raw: bool = False) -> bool:
    """The one rule for `llmtop run` and the dashboard: --chat forces the template, --raw sends
    the text as it is, otherwise the template is used where the model has one."""
    if raw:
        return False
    return chat or has_chat_template(model)


@dataclass
class RunSettings(Generate):
    """What the next Generate asks for: a Generate (so the request's fields are listed once, in
    the protocol) whose prompt None means: loop over the prompt set, and whose `chat` sends the
    prompt as a user message through the chat template (False: raw text)."""

    chat: bool = False

    @classmethod
    def from_request(cls, req: Generate, default_prompt: str, chat: bool | None = None) -> "RunSettings":
        """`chat` None: from the request (messages mean the template)."""
        prompt = req.prompt
        if req.messages:
            prompt, chat = req.messages[-1].get("content", ""), True if chat is None else chat
        if prompt == default_prompt:
            prompt = None   # the study's prompt is the first of the prompt set
        # per-run fields are the loop's to set: a profile is asked for with a key, not every run
        return cls(**{**_request_fields(req), "run_id": 0, "prompt": prompt, "messages": None,
                      "profile_steps": 0}, chat=bool(chat))

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
        if name in ("sample", "chat"):
            return replace(self, **{name: bool(raw)})
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
            top = 1 if name == "top_p" else MAX_TEMPERATURE
            if not 0 < value <= top:
                raise ValueError(f"{name} must be in (0, {top:g}]")
            return replace(self, **{name: value})
        raise ValueError(f"unknown setting {name}")


def _request_fields(req: Generate) -> dict:
    return {f.name: getattr(req, f.name) for f in fields(Generate)}
