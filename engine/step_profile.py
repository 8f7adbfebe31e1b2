"""A step profile on demand: torch.profiler over the prefill and the first N decode steps.

It answers "what bounds a step": the top kernels by device time, and how much of each step
the device is busy versus idle (waiting for the host to launch work: the eager decode of
Llama-2-7B on an H100 keeps the GPU busy ~8 ms of a ~44 ms step). On a CPU the "device" is
the CPU's ATen ops: idle is Python and framework time between them. Only a run that asks for
it is profiled; normal runs never enter the profiler.

With tensor parallelism it also answers "how much of a step is the ranks talking": the time
inside collectives per step and its share of the step. On a GPU that is the NCCL kernels' device
time (RCCL's are named nccl too); on a CPU it is gloo's own work, which torch.profiler records as
`gloo:all_reduce` / `gloo:all_gather` spans on gloo's threads (measured with torch 2.13: the
caller's `c10d::allreduce_` op only enqueues the work and returns in ~30 us, so it says nothing
of the time). Both include the time a rank waits for the slower one, as any collective does.
The share is of the decode steps alone (a `llmtop:decode` span marks them in the trace): a
prefill of thousands of tokens is compute-heavy and would hide what each decode step pays.
The stop flag llmtop itself broadcasts over its control group (`gloo:broadcast`, async, off the
critical path) is not one of the model's collectives and is left out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from llmtop.engine.protocol import StepProfile

from . import spec


GLOO_COLLECTIVES = ("gloo:all_reduce", "gloo:all_gather", "gloo:reduce_scatter",
                    "gloo:all_to_all", "gloo:alltoall", "gloo:allreduce", "gloo:allgather")


def is_collective(name: str, on_device: bool) -> bool:
    """Is this profiler event a collective's own work: an NCCL kernel (device event) on a GPU,
    a gloo all-reduce / all-gather span on a CPU."""
    if on_device:
        return "nccl" in name.lower()
    return name.startswith(GLOO_COLLECTIVES)


DECODE_MARK = "llmtop:decode"   # the span of the profiled decode steps, in the trace too


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class StepProfiler:
    def __init__(self, run_id: int, steps: int, device: str, tp: int = 1) -> None:
        self.run_id = run_id
        self.tp = tp
        self.steps = steps          # decode steps after the prefill
        self.seen = 0
        self.gpu = device.startswith("cuda")
        self.decode_mark: Any = None
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.gpu else [])
        self.prof = profile(activities=activities)

    def start(self) -> None:
        self.prof.__enter__()

    def tick(self) -> bool:
        """Counts a finished step; True once the prefill and `steps` decode steps are in."""
        self.seen += 1
        if self.seen == 1 and self.steps > 0:  # the prefill is done: the decode steps begin
            self.decode_mark = record_function(DECODE_MARK)
            self.decode_mark.__enter__()
        return self.seen == self.steps + 1

    def finish(self) -> StepProfile:
        if self.gpu:
            torch.cuda.synchronize()
        if self.decode_mark is not None:
            self.decode_mark.__exit__(None, None, None)
        self.prof.__exit__(None, None, None)
        events = self.prof.events()
        host_events = [e for e in events if e.device_type == DeviceType.CPU]
        if self.gpu:  # kernels (and copies) on the device itself
            busy_events = [e for e in events if e.device_type != DeviceType.CPU]
        else:  # top-level ATen ops on the host: children are inside their parents' spans
            busy_events = [e for e in host_events if e.name.startswith("aten::") and (
                e.cpu_parent is None or e.cpu_parent.name == DECODE_MARK)]
        spans = [(e.time_range.start, e.time_range.end) for e in events]
        window_us = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0
        busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in busy_events])
        # collectives: NCCL kernels on the device, or gloo's spans (CPU events on its threads)
        collectives = [e for e in (busy_events if self.gpu else events)
                       if is_collective(e.name, self.gpu)]
        per_step = self.seen or 1
        mark = next((e for e in events if e.name == DECODE_MARK), None)
        if mark is not None and self.seen > 1:   # the decode steps' span, the prefill left out
            lo, hi, decode_steps = mark.time_range.start, mark.time_range.end, self.seen - 1
        else:                                    # the run ended in its prefill
            lo, hi, decode_steps = min((a for a, _ in spans), default=0.0), \
                max((b for _, b in spans), default=0.0), per_step
        coll_us = _union_us([(max(e.time_range.start, lo), min(e.time_range.end, hi))
                             for e in collectives if min(e.time_range.end, hi) > max(e.time_range.start, lo)])
        if self.gpu:
            top = _top(busy_events, lambda e: e.time_range.elapsed_us(), "device_ms")
        else:
            top = _top([e for e in host_events if e.name != DECODE_MARK],
                       lambda e: e.self_cpu_time_total, "device_ms")
        host_ops = _top([e for e in host_events if not e.name.startswith("## ")
                         and e.name != DECODE_MARK], lambda e: e.self_cpu_time_total, "cpu_ms")
        trace = spec.cache_dir() / "traces" / f"run{self.run_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        trace.parent.mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(trace))
        return StepProfile(
            run_id=self.run_id, steps=self.seen, device="gpu" if self.gpu else "cpu",
            step_ms=window_us / per_step / 1e3, busy_ms=busy_us / per_step / 1e3,
            idle_ms=max(0.0, window_us - busy_us) / per_step / 1e3,
            top_kernels=top, trace_path=str(Path(trace)), tp=self.tp,
            collective_ms=coll_us / decode_steps / 1e3,
            collective_pct=100 * coll_us / (hi - lo) if hi > lo else 0.0,
            collective_calls=len(collectives), top_host_ops=host_ops)


def _top(events: list, us: Callable[[Any], float], unit: str, n: int = 15) -> list[dict[str, Any]]:
    """The `n` names that take the most time, with their calls and share of the total."""
    calls: dict[str, int] = {}
    total_us: dict[str, float] = {}
    for e in events:
        calls[e.name] = calls.get(e.name, 0) + 1
        total_us[e.name] = total_us.get(e.name, 0.0) + us(e)
    whole = sum(total_us.values()) or 1.0
    names = sorted(total_us, key=total_us.get, reverse=True)[:n]
    return [{"name": name[:120], "calls": calls[name], unit: total_us[name] / 1e3,
             "pct": 100 * total_us[name] / whole} for name in names]
