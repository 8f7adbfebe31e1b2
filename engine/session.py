"""EngineSession: one engine process driven synchronously (configure, then generate).

The configure-then-generate handshake in one place, for every headless owner (bench,
`llmtop run --headless`, scripts): it restarts an engine that dies or stalls, tracks what the
engine is configured with, and ends a run on the errors `ErrorKind.fatal` names (the one list).
"""

from __future__ import annotations

import queue
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from llmtop.engine.client import needs_fresh_engine
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, Error,
                                    ErrorKind, Generate, ModelInfo, RunDone, RunStarted, Status,
                                    StepProfile, Stop, Token)


@dataclass
class Outcome:
    record: dict[str, Any] | None = None
    error_kind: ErrorKind | None = None
    message: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)  # EngineEvents (recompiles, ...)
    profile: dict[str, Any] | None = None   # the run's StepProfile, when it asked for one


class EngineSession:
    """One engine process, restarted if it dies or stalls; tracks what it is configured with.

    `on_progress(kind, event)` sees every Status ("status") and Token ("token") as it arrives;
    `generate(req, on_token)` adds a callback for the run's tokens alone (headless streams text).
    """

    def __init__(self, log_path: str | None, stall_s: float,
                 on_progress: Callable[[str, Any], None] | None = None,
                 threads: int | None = None, stop_on_interrupt: bool = False) -> None:
        """`stop_on_interrupt`: a first Ctrl-C during a run stops it and keeps its record (one
        run, `llmtop run`); otherwise Ctrl-C goes straight to the caller (a sweep ends)."""
        self.stop_on_interrupt = stop_on_interrupt
        self.log_path = log_path
        self.stall_s = stall_s
        self.threads = threads   # the engine's CPU threads (None: engine/threads.py chooses)
        self.on_progress = on_progress or (lambda *a: None)
        self.client = None
        self.current: Configure | None = None
        self.device_info: DeviceInfo | None = None
        self.model_info: ModelInfo | None = None
        self.applied: Configure | None = None   # what the engine runs now (its ConfigApplied)
        self._run_id = 0

    def start(self) -> None:
        from llmtop.engine.client import EngineClient

        self.client = EngineClient(log_path=self.log_path, threads=self.threads)
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

    def send(self, command: Any) -> None:
        """A command outside the handshake (e.g. Stop while `generate` runs on another thread)."""
        if self.client is not None:
            self.client.send(command)

    def _get(self, what: str) -> Any:
        """The next event; an Error of kind stalled (and a fresh engine) after `stall_s`."""
        try:
            return self.client.get(timeout=self.stall_s)
        except queue.Empty:
            self.restart()
            return Error(ErrorKind.STALLED,
                         f"no word from the engine for {self.stall_s:.0f} s {what}")

    def _fatal(self, ev: Error, events: list[dict[str, Any]] | None = None) -> Outcome:
        if ev.kind == ErrorKind.ENGINE_DEAD:
            self.restart()
        return Outcome(error_kind=ev.kind, message=ev.message, events=events or [])

    def configure(self, cfg: Configure) -> Outcome:
        if self.current == cfg:
            return Outcome()
        if needs_fresh_engine(self.applied, cfg):
            self.restart()
        self.current = None
        self.client.send(cfg)
        while True:
            ev = self._get("while configuring")
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
            elif isinstance(ev, Error):   # every error ends a configuration
                return self._fatal(ev)

    def generate(self, req: Generate,
                 on_token: Callable[[Token], None] | None = None) -> Outcome:
        """Runs `req`; the Outcome holds its record, or why there is none. An error that is not
        fatal (oom, runtime mid-run) comes with the record of the tokens measured before it.

        A first Ctrl-C asks the engine to stop the run, whose tokens so far still make a record
        (`stopped: "stop"`); a second one is the caller's.
        """
        self._run_id += 1
        req.run_id = self._run_id
        self.client.send(req)
        started = stopping = False
        error: Error | None = None
        events: list[dict[str, Any]] = []
        profile: dict[str, Any] | None = None
        while True:
            try:   # the interrupt can land anywhere in an iteration (printing a token, say)
                ev = self._get("during a run")
                if isinstance(ev, RunStarted) and ev.run_id == req.run_id:
                    started = True
                elif isinstance(ev, Token) and ev.run_id == req.run_id:
                    self.on_progress("token", ev)
                    if on_token is not None:
                        on_token(ev)
                elif isinstance(ev, EngineEvent):
                    events.append(asdict(ev))
                elif isinstance(ev, StepProfile) and ev.run_id == req.run_id:
                    profile = asdict(ev)
                elif isinstance(ev, RunDone) and ev.run_id == req.run_id:
                    return Outcome(ev.record, error.kind if error else None,
                                   error.message if error else "", events, profile)
                elif isinstance(ev, Error):
                    if ev.kind.fatal:
                        return self._fatal(ev, events)
                    error = ev
                elif isinstance(ev, Status) and started and error is not None and ev.phase in ("ready", "error"):
                    return Outcome(error_kind=error.kind, message=error.message, events=events)
            except KeyboardInterrupt:
                if stopping or not self.stop_on_interrupt:
                    raise
                stopping = True
                self.client.send(Stop())
