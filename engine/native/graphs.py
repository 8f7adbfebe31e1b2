"""The decode step, eager or captured once per (batch size, KV span) with CUDA graphs.

Why spans: a captured graph has fixed shapes, and attending over the whole context every step
would read the whole cache (at 4096 slots, 2 GB per request per step on a 7B). So the step is
captured for spans of SPAN_STEP slots up to the context, and each step replays the smallest
span that covers the longest row: at most SPAN_STEP - 1 slots read in vain, and nothing is ever
recompiled or recaptured while a sequence grows. Batch sizes are captured at powers of two up
to the cache's batch; a batch in between replays the next size up, its extra rows idle.

All captures happen in the constructor (configure time) as one "capture" event with its
duration; the graphs share one memory pool (they never run at once), largest first.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .model import NativeUnsupported

SPAN_STEP = 256      # KV slots per captured span


def graph_batches(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class Decoder:
    """`step(ids, batch, need)` runs one decode step for `batch` rows whose longest row will
    write slot need - 1; rows' lengths live in `lens` (device), which the step advances."""

    def __init__(self, model: Any, cache: Any, max_batch: int, capture: bool,
                 on_event: Callable[[str, str, int, float], None]) -> None:
        self.model, self.cache = model, cache
        device = model.device
        self.lens = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.ids = torch.zeros(max_batch, 1, dtype=torch.long, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.batches = graph_batches(max_batch)
        self.spans = list(range(SPAN_STEP, model.shape.context, SPAN_STEP)) + [model.shape.context]
        if capture:
            if torch.device(device).type != "cuda":
                raise NativeUnsupported("compile=full captures the decode step in CUDA graphs, "
                                        "which need a CUDA device: use compile=off on the CPU")
            start = time.perf_counter_ns()
            self._capture_all()
            on_event("capture", f"native decode step: {len(self.graphs)} CUDA graphs "
                     f"(batch {self.batches}, KV spans of {SPAN_STEP} to {self.spans[-1]})",
                     start, (time.perf_counter_ns() - start) / 1e6)

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        saved = self.lens.clone()
        with torch.inference_mode():
            for b in reversed(self.batches):
                for span in reversed(self.spans):
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):  # warm-up: cuBLAS picks, allocator pools
                        self.model.decode(self.ids[:b], self.lens[:b], self.cache, span)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        out = self.model.decode(self.ids[:b], self.lens[:b], self.cache, span)
                    self.graphs[(b, span)] = (graph, out)
                    self.lens.copy_(saved)
        torch.cuda.synchronize()

    def start(self, lengths: list[int]) -> None:
        """A new batch: rows' lengths after prefill; idle rows beyond it start at 0."""
        self.lens.zero_()
        self.lens[:len(lengths)] = torch.tensor(lengths, dtype=torch.long)

    def step(self, ids: torch.Tensor, batch: int, need: int) -> torch.Tensor:
        if not self.graphs:
            return self.model.decode(ids, self.lens[:batch], self.cache, need)
        b = next(s for s in self.batches if s >= batch)
        span = next(s for s in self.spans if s >= need)
        graph, out = self.graphs[(b, span)]
        self.ids[:batch].copy_(ids)
        graph.replay()
        return out[:batch]
