"""HostMonitor (psutil) on this machine's /proc and on a two-socket fixture procfs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from llmtop.profilers.host import HostMonitor, load_average

GIB_KB = 1024 * 1024


def _stat(per_cpu: list[tuple[int, int]]) -> str:
    """A /proc/stat with (busy, idle) ticks per CPU: busy as user time, the rest zero."""
    lines = [f"cpu  {sum(b for b, _ in per_cpu)} 0 0 {sum(i for _, i in per_cpu)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(per_cpu)]
    return "\n".join(lines + ["intr 0", "ctxt 0", "btime 0", "processes 1",
                              "procs_running 1", "procs_blocked 0"]) + "\n"


@pytest.fixture
def two_socket_procfs(tmp_path, monkeypatch):
    """16 CPUs, 128 GiB, load 7.5; psutil reads it instead of /proc."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(_stat([(100, 100)] * 16))
    (proc / "meminfo").write_text(
        f"MemTotal:       {128 * GIB_KB} kB\nMemFree:        {64 * GIB_KB} kB\n"
        f"MemAvailable:   {96 * GIB_KB} kB\nBuffers:        0 kB\nCached:         0 kB\n"
        "SwapTotal:      0 kB\nSwapFree:       0 kB\nShmem:          0 kB\n"
        "SReclaimable:   0 kB\nActive:         0 kB\nInactive:       0 kB\n")
    (proc / "loadavg").write_text("7.50 6.25 5.00 9/1234 5678\n")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(proc))
    return proc


def test_fixture_host_per_core_memory_and_load(two_socket_procfs):
    monitor = HostMonitor()
    # socket 0 (CPUs 0-7) fully busy, socket 1 half busy, since the monitor's first reading
    (two_socket_procfs / "stat").write_text(_stat([(300, 100)] * 8 + [(200, 200)] * 8))
    sample = monitor.sample()
    assert sample.per_core_pct == [100.0] * 8 + [50.0] * 8
    assert sample.cpu_pct == 75.0
    assert sample.mem_total == 128 * 1024**3
    assert sample.mem_available == 96 * 1024**3
    assert sample.mem_used == 32 * 1024**3
    assert sample.load_avg == (7.5, 6.25, 5.0)
    assert sample.pid is None and sample.proc_cpu_pct is None and sample.proc_rss is None


def test_this_machine_and_a_busy_engine_process():
    """A child spinning on one core reads about 100% of a core, with a real RSS; once it is
    gone the monitor stops reporting it instead of failing."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        monitor = HostMonitor(child.pid)
        proc, start = psutil.Process(child.pid), time.perf_counter()
        cpu0 = sum(proc.cpu_times()[:2])
        time.sleep(0.5)
        sample = monitor.sample()
        # what the child really got of a core meanwhile (less than 100% on a loaded 2-core CI)
        got = 100 * (sum(proc.cpu_times()[:2]) - cpu0) / (time.perf_counter() - start)
        assert len(sample.per_core_pct) == psutil.cpu_count()
        assert all(0.0 <= p <= 100.0 for p in sample.per_core_pct)
        assert sample.cpu_pct > 0
        assert 0.0 < sample.proc_cpu_pct <= 110.0
        assert sample.proc_cpu_pct == pytest.approx(got, abs=20)
        assert sample.proc_rss > 1024**2
        assert sample.load_avg == pytest.approx(os.getloadavg(), abs=0.5)
        assert Path("/proc/meminfo").exists() and sample.mem_total == psutil.virtual_memory().total
    finally:
        child.kill()
        child.wait()
    gone = monitor.sample()
    assert gone.proc_cpu_pct is None and gone.proc_rss is None and gone.pid == child.pid


def test_watching_a_pid_that_does_not_exist_is_not_an_error():
    monitor = HostMonitor(2**22 + 12345)
    assert monitor.sample().proc_rss is None


def test_load_average_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))
    assert load_average() is None
