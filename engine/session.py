"""EngineSession: one engine process driven synchronously (configure, then generate).

The configure-then-generate handshake in one place, for every headless owner (bench,
`llmtop run --headless`, scripts): it restarts an engine that dies or stalls, and tracks what
the engine is configured with.
"""

from __future__ import annotations

import queue
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop.engine.client import needs_fresh_engine
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, Error,
                                    Generate, ModelInfo, RunDone, RunStarted, Status, StepProfile,
                                    Token)


@dataclass
class Outcome:
    record: dict[str, Any] | None = None
    error_kind: str = ""
    message: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)  # EngineEvents (recompiles, ...)
    profile: dict[str, Any] | None = None   # the run's StepProfile, when it asked for one


class EngineSession:
    """One engine process, restarted if it dies or stalls; tracks what it is configured with."""

    FATAL = ("engine_dead", "bad_request", "config", "not_configured", "internal", "protocol")

    def __init__(self, log_path: str | None, stall_s: float, on_progress=None) -> None:
        self.log_path = log_path
        self.stall_s = stall_s
        self.on_progress = on_progress or (lambda *a: None)
        self.client = None
        self.current: Configure | None = None
        self.device_info: DeviceInfo | None = None
        self.model_info: ModelInfo | None = None
        self.applied: dict[str, Any] | None = None
        self._run_id = 0

    def start(self) -> None:
        from llmtop.engine.client import EngineClient

        self.client = EngineClient(log_path=self.log_path)
        self.client.start()
        self.current = None

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.current = None
        self.applied = None

    def _get(self) -> Any:
        try:
            return self.client.get(timeout=self.stall_s)
        except queue.Empty:
            return None

    def configure(self, cfg: Configure) -> Outcome:
        if self.current == cfg:
            return Outcome()
        if needs_fresh_engine(self.applied, cfg):
            self.restart()
        self.current = None
        self.client.send(cfg)
        while True:
            ev = self._get()
            if ev is None:
                self.restart()
                return Outcome(error_kind="stalled",
                               message=f"no word from the engine for {self.stall_s:.0f} s while configuring")
            if isinstance(ev, Status):
                self.on_progress("status", ev)
            elif isinstance(ev, ModelInfo):
                self.model_info = ev
            elif isinstance(ev, DeviceInfo):
                self.device_info = ev
            elif isinstance(ev, ConfigApplied):
                self.applied = ev.config
                self.current = cfg
                return Outcome()
            elif isinstance(ev, Error):
                if ev.kind == "engine_dead":
                    self.restart()
                return Outcome(error_kind=ev.kind, message=ev.message)

    def generate(self, req: Generate) -> Outcome:
        self._run_id += 1
        req.run_id = self._run_id
        self.client.send(req)
        started = False
        error: Error | None = None
        events: list[dict[str, Any]] = []
        profile: dict[str, Any] | None = None
        while True:
            ev = self._get()
            if ev is None:
                self.restart()
                return Outcome(error_kind="stalled",
                               message=f"no word from the engine for {self.stall_s:.0f} s during a run")
            if isinstance(ev, RunStarted) and ev.run_id == req.run_id:
                started = True
            elif isinstance(ev, Token) and ev.run_id == req.run_id:
                self.on_progress("token", ev)
            elif isinstance(ev, EngineEvent):
                events.append(asdict(ev))
            elif isinstance(ev, StepProfile) and ev.run_id == req.run_id:
                profile = asdict(ev)
            elif isinstance(ev, RunDone) and ev.run_id == req.run_id:
                return Outcome(ev.record, error.kind if error else "", error.message if error else "",
                               events, profile)
            elif isinstance(ev, Error):
                if ev.kind in self.FATAL:
                    if ev.kind == "engine_dead":
                        self.restart()
                    return Outcome(error_kind=ev.kind, message=ev.message, events=events)
                error = ev
            elif isinstance(ev, Status) and started and error is not None and ev.phase in ("ready", "error"):
                return Outcome(error_kind=error.kind, message=error.message, events=events)
