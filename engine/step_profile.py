"""A step profile on demand: torch.profiler over the prefill and the first N decode steps.

It answers "what bounds a step": the top kernels by device time, and how much of each step
the device is busy versus idle (waiting for the host to launch work: the eager decode of
Llama-2-7B on an H100 keeps the GPU busy ~8 ms of a ~44 ms step). On a CPU the "device" is
the CPU's ATen ops: idle is Python and framework time between them. Only a run that asks for
it is profiled; normal runs never enter the profiler.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from llmtop.protocol import StepProfile

from . import spec


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class StepProfiler:
    def __init__(self, run_id: int, steps: int, device: str) -> None:
        self.run_id = run_id
        self.steps = steps          # decode steps after the prefill
        self.seen = 0
        self.gpu = device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.gpu else [])
        self.prof = profile(activities=activities)

    def start(self) -> None:
        self.prof.__enter__()

    def tick(self) -> bool:
        """Counts a finished step; True once the prefill and `steps` decode steps are in."""
        self.seen += 1
        return self.seen == self.steps + 1

    def finish(self) -> StepProfile:
        if self.gpu:
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        events = self.prof.events()
        host_events = [e for e in events if e.device_type == DeviceType.CPU]
        if self.gpu:  # kernels (and copies) on the device itself
            busy_events = [e for e in events if e.device_type != DeviceType.CPU]
        else:  # top-level ATen ops on the host: children are inside their parents' spans
            busy_events = [e for e in host_events
                           if e.cpu_parent is None and e.name.startswith("aten::")]
        spans = [(e.time_range.start, e.time_range.end) for e in events]
        window_us = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0
        busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in busy_events])
        per_step = self.seen or 1
        if self.gpu:
            top = _top(busy_events, lambda e: e.time_range.elapsed_us(), "device_ms")
        else:
            top = _top(host_events, lambda e: e.self_cpu_time_total, "device_ms")
        host_ops = _top([e for e in host_events if not e.name.startswith("## ")],
                        lambda e: e.self_cpu_time_total, "cpu_ms")
        trace = spec.cache_dir() / "traces" / f"run{self.run_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        trace.parent.mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(trace))
        return StepProfile(
            run_id=self.run_id, steps=self.seen, device="gpu" if self.gpu else "cpu",
            step_ms=window_us / per_step / 1e3, busy_ms=busy_us / per_step / 1e3,
            idle_ms=max(0.0, window_us - busy_us) / per_step / 1e3,
            top_kernels=top, trace_path=str(Path(trace)), top_host_ops=host_ops)


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
