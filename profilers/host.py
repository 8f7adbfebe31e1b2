"""Host load through psutil: per-core CPU %, memory, load average, and the engine process.

A decode step that waits on the CPU (Python dispatch, the tokenizer, a noisy neighbour) shows
up here, not on the GPU. Per-core percentages are computed from this monitor's own previous
/proc/stat reading rather than psutil.cpu_percent(), whose baseline is shared by every caller
in the process. All readings go through psutil's procfs, so tests redirect every one of them
at once by setting psutil.PROCFS_PATH to a fixture tree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil


@dataclass
class HostSample:
    """One poll of the host; process fields are None when no pid is watched or it is gone."""

    t_ns: int
    cpu_pct: float  # all cores, 0-100
    per_core_pct: list[float] = field(default_factory=list)
    mem_total: int = 0  # bytes
    mem_used: int = 0
    mem_available: int = 0
    load_avg: tuple[float, float, float] | None = None
    pid: int | None = None
    proc_cpu_pct: float | None = None  # of one core: a busy 4-thread process reads up to 400
    proc_rss: int | None = None  # bytes


def _total(times: tuple) -> float:
    """All time of one CPU; Linux already counts guest time inside user and nice."""
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _busy_pct(now: tuple, then: tuple) -> float:
    """Busy share of one CPU between two cpu_times readings (idle and iowait count as idle)."""
    total = _total(now) - _total(then)
    if total <= 0:
        return 0.0
    idle = (now.idle + getattr(now, "iowait", 0.0)) - (then.idle + getattr(then, "iowait", 0.0))
    return max(0.0, min(100.0, 100.0 * (1.0 - idle / total)))


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages from <procfs>/loadavg; None where it doesn't exist."""
    try:
        with open(f"{psutil.PROCFS_PATH}/loadavg") as f:
            one, five, fifteen = f.read().split()[:3]
    except (OSError, ValueError):
        return None
    return float(one), float(five), float(fifteen)


class HostMonitor:
    """Keeps the previous readings a percentage needs; call sample() at the poll rate.

    The first sample's percentages cover the time since the monitor was made, so make it a
    poll period before the first sample (the Sampler does).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._cpu_then = psutil.cpu_times(percpu=True)
        self._proc: psutil.Process | None = None
        self.watch(pid)

    def watch(self, pid: int | None) -> None:
        """Follows a new engine process (after a restart), or none."""
        self._proc = None
        if pid is not None:
            try:
                self._proc = psutil.Process(pid)
                self._proc.cpu_percent(None)  # sets this Process object's baseline
            except psutil.Error:
                self._proc = None
        self._pid = pid

    def sample(self) -> HostSample:
        t_ns = time.perf_counter_ns()
        cpu_now = psutil.cpu_times(percpu=True)
        per_core = [_busy_pct(now, then) for now, then in zip(cpu_now, self._cpu_then)]
        self._cpu_then = cpu_now
        mem = psutil.virtual_memory()
        proc_cpu = proc_rss = None
        if self._proc is not None:
            try:
                with self._proc.oneshot():
                    proc_cpu = self._proc.cpu_percent(None)
                    proc_rss = self._proc.memory_info().rss
            except psutil.Error:
                self._proc = None
        return HostSample(
            t_ns=t_ns,
            cpu_pct=sum(per_core) / len(per_core) if per_core else 0.0,
            per_core_pct=per_core,
            mem_total=mem.total,
            mem_used=mem.total - mem.available,
            mem_available=mem.available,
            load_avg=load_average(),
            pid=self._pid,
            proc_cpu_pct=proc_cpu,
            proc_rss=proc_rss,
        )
