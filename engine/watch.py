"""EngineEvents that explain slow tokens, for the markers on the latency trace.

- Dynamo says when it recompiles, where a graph breaks, and when it gives up after
  `recompile_limit` recompiles and leaves the rest to eager (the study's per-layer compile hits
  this silently at layer 8). We listen to its loggers instead of guessing.
- CUDA-graph trees (compile=full) compile and warm up a new shape on its first call and record
  its graph on the second; `GraphWatch` times those two calls per shape.
- TunableOp tunes each GEMM shape the first time it sees it; `TuningWatch` counts its results.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from llmtop.engine.protocol import EngineEvent

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


class GraphWatch:
    """The compiled decode step (compile=full), with its compile and graph-capture calls timed.

    After a shape's first two calls it adds one dict lookup per step: replays pay nothing else.
    """

    def __init__(self, step: Callable[..., Any], emit: Callable[[EngineEvent], None]) -> None:
        self.step = step
        self.emit = emit
        self.calls: dict[tuple[int, int], int] = {}

    def __call__(self, **kw: Any) -> Any:
        ids, mask = kw["input_ids"], kw["attention_mask"]
        key = (int(ids.shape[0]), int(mask.shape[-1]))
        n = self.calls.get(key, 0)
        if n >= 2:
            return self.step(**kw)
        self.calls[key] = n + 1
        t0 = time.perf_counter_ns()
        out = self.step(**kw)
        if ids.is_cuda:
            torch.cuda.synchronize(ids.device)
        elif n == 1:  # no CUDA graphs on a CPU: the second call is a plain compiled call
            return out
        ms = (time.perf_counter_ns() - t0) / 1e6
        what = "compiled and warmed up" if n == 0 else "CUDA graph recorded"
        self.emit(EngineEvent("compile" if n == 0 else "capture",
                              f"decode step, batch {key[0]}, cache {key[1]}: {what} in {ms:.0f} ms",
                              t0, duration_ms=ms))
        return out


class TuningWatch:
    """Says when TunableOp tuned new GEMM shapes, and how many, during a run or a check.

    Each new shape is tuned when first met, inside the step that needs it: a run whose GEMM
    shapes keep changing (eager attention's score matmuls grow with the KV length) tunes on
    every step. One event marks the first tuning step of a run; `summary` gives the count.
    """

    def __init__(self, emit: Callable[[EngineEvent], None]) -> None:
        self.emit = emit
        self.known = self._count()
        self.tuned = 0
        self.steps = 0

    @staticmethod
    def _count() -> int:
        return len(torch.cuda.tunable.get_results())

    def check(self, where: str, since_ns: int | None = None) -> None:
        """Call after a step (that began at `since_ns`, when known): notes the shapes tuned
        during it. The first tuning step is marked as a stall lasting that step's time."""
        n = self._count()
        if n > self.known:
            if self.steps == 0:
                now = time.perf_counter_ns()
                self.emit(EngineEvent("tuning", f"TunableOp tuned {n - self.known} new GEMM "
                                      f"shape(s) {where}", since_ns if since_ns else now,
                                      duration_ms=(now - since_ns) / 1e6 if since_ns else None))
            self.tuned += n - self.known
            self.steps += 1
            self.known = n

    def summary(self, what: str, steps: int) -> None:
        if self.steps > 1:
            self.emit(EngineEvent("tuning", f"TunableOp tuned {self.tuned} GEMM shapes in "
                                  f"{self.steps} of {steps} steps of {what}",
                                  time.perf_counter_ns()))
