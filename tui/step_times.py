"""How long applying a configuration took on this machine, remembered between sessions."""

from __future__ import annotations

import json
from pathlib import Path

from llmtop.engine.protocol import Configure

from .state import config_label


class StepTimes:
    """How long applying a configuration took on this machine (the last time), kept in a small
    JSON file so a long wait (a compile, a static cache) can say what to expect."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}
        if path is not None:
            try:
                self.seconds = {k: float(v) for k, v in json.loads(path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self.seconds = {}

    @staticmethod
    def key(cfg: Configure) -> str:
        return f"{cfg.model}|{cfg.device}|{config_label(cfg.opts, tp=cfg.tp)}"

    def last(self, cfg: Configure) -> float | None:
        return self.seconds.get(self.key(cfg))

    def note(self, cfg: Configure, seconds: float) -> None:
        self.seconds[self.key(cfg)] = round(seconds, 1)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.seconds, indent=0))
            except OSError:
                pass
