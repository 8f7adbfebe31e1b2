"""Messages that threads (the engine reader, the telemetry sampler, workers) post to the app.

post_message is thread-safe; these carry plain data only, and the app's handlers run on the
event loop, so no widget is ever touched from another thread.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class EngineEventMessage(Message):
    """One protocol event from the engine (Status, Token, RunDone, Error, ...)."""

    def __init__(self, event: Any, generation: int = 0) -> None:
        super().__init__()
        self.event = event
        self.generation = generation   # which engine instance sent it (restarts bump it)


class EngineStarted(Message):
    def __init__(self, pid: int | None, generation: int, error: str = "") -> None:
        super().__init__()
        self.pid = pid
        self.generation = generation
        self.error = error


class TelemetryReady(Message):
    """The GPU backend chosen, its devices and topology, or why there is none."""

    def __init__(self, backend: str, devices: list[Any], reasons: list[str], topology: Any) -> None:
        super().__init__()
        self.backend = backend
        self.devices = devices
        self.reasons = reasons
        self.topology = topology


class TelemetryTick(Message):
    """One sampler poll, the dashboard's own CPU %, and the sampler's cost."""

    def __init__(self, tick: Any, ui_cpu_pct: float | None, cost: Any = None) -> None:
        super().__init__()
        self.tick = tick
        self.ui_cpu_pct = ui_cpu_pct
        self.cost = cost


class NumaUpdate(Message):
    def __init__(self, status: Any) -> None:
        super().__init__()
        self.status = status


class SessionSaved(Message):
    def __init__(self, path: str, error: str = "") -> None:
        super().__init__()
        self.path = path
        self.error = error
