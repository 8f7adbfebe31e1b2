"""Turns torch.compile's own log records into EngineEvents the UI marks on the latency trace.

Dynamo says when it recompiles, where a graph breaks, and when it gives up after
`recompile_limit` recompiles and leaves the rest to eager (the study's per-layer compile hits
this silently at layer 8). We listen to its loggers instead of guessing.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from llmtop.protocol import EngineEvent

KINDS = (
    ("hit config.recompile_limit", "recompile_limit"),
    ("Recompiling function", "recompile"),
    ("Graph break", "graph_break"),
    ("cudagraph", "cudagraph"),
    ("CUDAGraph", "cudagraph"),
)


class CompileWatcher(logging.Handler):
    def __init__(self, emit: Callable[[EngineEvent], None]) -> None:
        super().__init__(level=logging.DEBUG)
        self.emit_event = emit
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for needle, kind in KINDS:
            if needle in message:
                self.counts[kind] = self.counts.get(kind, 0) + 1
                first = message.strip().splitlines()
                detail = " ".join(line.strip() for line in first[:3])[:240]
                self.emit_event(EngineEvent(kind, detail, time.perf_counter_ns()))
                return


def install(emit: Callable[[EngineEvent], None]) -> CompileWatcher:
    """Switches on dynamo's recompile and graph-break logs and routes them to `emit`."""
    torch._logging.set_logs(recompiles=True, graph_breaks=True)
    watcher = CompileWatcher(emit)
    for name in ("torch._dynamo", "torch._inductor"):
        logging.getLogger(name).addHandler(watcher)
    return watcher
