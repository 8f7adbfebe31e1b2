"""The decode step, eager or captured once per batch size with CUDA graphs.

The decode kernel (attention.py) reads each row up to its own length from `lens` on the
device, so one graph per batch size serves every length: nothing is recompiled or recaptured
while a sequence grows. Where SDPA attends instead (a head_dim the kernel does not tile), a
graph's fixed shapes would make it read the whole context each step, so the step is captured
per span of SPAN_STEP slots and each step replays the smallest span that covers the longest
row. Batch sizes are captured at powers of two up to the cache's batch; a batch in between
replays the next size up, its extra rows idle.

With compile=full on one CUDA device the step is fused.py's own kernels (eight a layer, each
GEMV's tiling timed on this card at build time). Under tensor parallelism, or where the decode
kernel does not apply, the step's pure pieces (model.Pieces: norm + q/k/v + rotary; o + MLP;
the LM head) are compiled with fullgraph=True once per batch size instead (max-autotune with
coordinate descent: Triton GEMVs), one compiled version serving all layers.

Compiling and capturing happen in the constructor (configure time), each one EngineEvent with
its duration; the graphs share one memory pool (they never run at once), largest first.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import torch

from .model import EAGER, NativeUnsupported, Pieces, attn_in, attn_out_mlp, head

SPAN_STEP = 256      # KV slots per captured span
KERNELS = "kernels"  # compile=full's mode: fused.py's tuned kernels (else an inductor mode)
# the same kernels without programmatic dependent launch (overlap.py): native_decode.py's A/B
SERIAL = "kernels-serial"
INDUCTOR = "max-autotune-no-cudagraphs"   # the pieces' mode where those kernels do not apply


@functools.lru_cache(maxsize=None)
def compiled(mode: str | None) -> Pieces:
    """One compiled set per mode for the process: a later backend reuses its compiled code."""
    kw = dict(fullgraph=True, dynamic=False, mode=mode)
    return Pieces(torch.compile(attn_in, **kw), torch.compile(attn_out_mlp, **kw),
                  torch.compile(head, **kw))


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
                 on_event: Callable[[str, str, int, float], None],
                 mode: str | None = KERNELS,
                 batches: list[int] | None = None) -> None:
        self.model, self.cache = model, cache
        self.fns = EAGER
        device = model.device
        self.lens = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.ids = torch.zeros(max_batch, 1, dtype=torch.long, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.batches = sorted(batches or graph_batches(max_batch))
        self.spans = [cache.context] if model.decode_attention is not None else \
            list(range(SPAN_STEP, cache.context, SPAN_STEP)) + [cache.context]
        self.fused: Any = None     # fused.FusedDecode: this module's own kernels
        if capture:
            if torch.device(device).type != "cuda":
                raise NativeUnsupported("compile=full captures the decode step in CUDA graphs, "
                                        "which need a CUDA device: use compile=off on the CPU")
            start = time.perf_counter_ns()
            ours = mode in (KERNELS, SERIAL)
            if ours and model.all_reduce is None and model.decode_attention is not None:
                from .fused import FusedDecode
                from .overlap import Overlap

                overlap = Overlap.best(torch.device(device)) if mode == KERNELS else Overlap()
                self.fused = FusedDecode(model, cache, overlap)
                plans = "; ".join(f"batch {b}: {self.fused.tune(b)}" for b in self.batches)
                launch = "dependent launch" if overlap.pdl else "serial launch"
                what = f"native decode kernels ({launch}), tilings timed on this card: {plans}"
            else:
                inductor_mode = INDUCTOR if ours else mode
                self.fns = compiled(inductor_mode)
                self._compile_all()
                what = (f"native decode pieces, fullgraph, mode {inductor_mode or 'default'}, "
                        f"batch {self.batches}")
            on_event("compile", what, start, (time.perf_counter_ns() - start) / 1e6)
            start = time.perf_counter_ns()
            self._capture_all()
            spans = "KV read in place" if len(self.spans) == 1 else \
                f"KV spans of {SPAN_STEP} to {self.spans[-1]}"
            on_event("capture", f"native decode step: {len(self.graphs)} CUDA graphs "
                     f"(batch {self.batches}, {spans})",
                     start, (time.perf_counter_ns() - start) / 1e6)

    def _decode(self, batch: int, span: int) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.step(self.ids[:batch], self.lens[:batch])
        return self.model.decode(self.ids[:batch], self.lens[:batch], self.cache, span, self.fns)

    def _compile_all(self) -> None:
        """One call per batch size compiles the pieces (the span does not reach them)."""
        import torch._inductor.config as inductor

        saved = self.lens.clone()
        with torch.inference_mode(), inductor.patch(coordinate_descent_tuning=True):
            for b in self.batches:
                self._decode(b, self.spans[0])
                self.lens.copy_(saved)
        torch.cuda.synchronize()

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        saved = self.lens.clone()
        with torch.inference_mode():
            for b in reversed(self.batches):
                for span in reversed(self.spans):
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):  # warm-up: cuBLAS picks, allocator pools
                        self._decode(b, span)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        out = self._decode(b, span)
                    self.graphs[(b, span)] = (graph, out)
                    self.lens.copy_(saved)
        torch.cuda.synchronize()

    def start(self, lengths: list[int]) -> None:
        """A new batch: rows' lengths after prefill; idle rows beyond it start at 0."""
        self.lens.zero_()
        self.lens[:len(lengths)] = torch.tensor(lengths, dtype=torch.long)

    def check(self, batch: int) -> None:
        if self.graphs and batch > self.batches[-1]:
            raise NativeUnsupported(f"batch {batch} exceeds the captured decode graphs' "
                                    f"largest batch ({self.batches[-1]})")

    def step(self, ids: torch.Tensor, batch: int, need: int) -> torch.Tensor:
        if not self.graphs:
            return self.model.decode(ids, self.lens[:batch], self.cache, need)
        b = next(s for s in self.batches if s >= batch)
        span = next(s for s in self.spans if s >= need)
        graph, out = self.graphs[(b, span)]
        self.ids[:batch].copy_(ids)
        graph.replay()
        return out[:batch]
