"""Sampler: rate, its own cost, ring buffers, token-to-sample matching, robustness."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from llmtop.profilers.gpu import GpuSample, GpuStatic, NoGpuBackend
from llmtop.profilers.sampler import Sampler
from llmtop.profilers.topology import TopologyMatrix


class StubBackend:
    """Two GPUs; each poll costs `delay_s`; `stamps` (if given) scripts the t_ns values."""

    name = "stub"

    def __init__(self, delay_s: float = 0.0, stamps: list[int] | None = None,
                 fail_on: set[int] | None = None) -> None:
        self.delay_s, self.stamps, self.fail_on = delay_s, stamps, fail_on or set()
        self.polls = 0
        self.pids: list[int | None] = []

    def devices(self) -> list[GpuStatic]:
        return [GpuStatic(index=i, name=f"stub{i}", vendor="none") for i in range(2)]

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        self.polls += 1
        self.pids.append(pid)
        if self.polls in self.fail_on:
            raise RuntimeError("driver hiccup")
        if self.delay_s:
            time.sleep(self.delay_s)
        t = self.stamps.pop(0) if self.stamps else time.perf_counter_ns()
        return [GpuSample(t_ns=t, index=i, power_w=100.0 + self.polls) for i in range(2)]

    def topology(self) -> TopologyMatrix:
        return TopologyMatrix(source="stub", indices=[], links=[])

    def describe(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


def test_polls_at_the_configured_rate_and_stops_promptly():
    backend = StubBackend()
    sampler = Sampler(backend, hz=25).start()
    time.sleep(0.6)
    t_stop = time.perf_counter()
    sampler.stop()
    assert time.perf_counter() - t_stop < 0.2
    assert 10 <= sampler.cost().polls <= 16  # 15 at exactly 25 Hz
    stamps = [s.t_ns for s in sampler.gpu_history(0)]
    gaps_ms = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])]
    assert sorted(gaps_ms)[len(gaps_ms) // 2] == pytest.approx(40, abs=8)  # median period
    polls = sampler.cost().polls
    time.sleep(0.1)
    assert sampler.cost().polls == polls  # really stopped


def test_default_rate_is_10_hz_and_slow_rates_still_stop_at_once():
    sampler = Sampler(StubBackend())
    assert sampler.period_ns == 100_000_000
    slow = Sampler(StubBackend(), hz=0.2).start()
    t = time.perf_counter()
    slow.stop()
    assert time.perf_counter() - t < 0.2 and slow.cost().polls == 0
    with pytest.raises(ValueError):
        Sampler(StubBackend(), hz=0)


def test_measures_its_own_cost_per_poll():
    """Cost is the CPU a poll burns; waiting (a slow driver, another thread's GIL) is wall."""
    sampler = Sampler(StubBackend(delay_s=0.005))
    for _ in range(4):
        sampler.poll()
    cost = sampler.cost()
    assert cost.polls == 4
    assert cost.wall_mean_ms >= 5.0 and cost.mean_ms < 5.0
    assert Sampler(StubBackend()).cost().polls == 0

    class Spinning(StubBackend):
        def sample(self, pid=None):
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
            return super().sample(pid)

    busy = Sampler(Spinning())
    for _ in range(4):
        busy.poll()
    cost = busy.cost()
    assert 5.0 <= cost.mean_ms <= cost.max_ms < 100 and cost.last_ms >= 5.0
    assert cost.wall_mean_ms >= cost.mean_ms * 0.9


def test_ring_buffers_keep_the_newest(monkeypatch):
    sampler = Sampler(StubBackend(), history=5)
    for _ in range(12):
        sampler.poll()
    history = sampler.gpu_history(1)
    assert len(history) == 5
    assert [s.power_w for s in history] == [108.0, 109.0, 110.0, 111.0, 112.0]
    assert len(sampler.host_history()) == 5
    latest = sampler.latest()
    assert [s.power_w for s in latest.gpus] == [112.0, 112.0] and latest.host is not None


def test_samples_between_matches_a_token_to_the_samples_around_it():
    ms = 1_000_000
    sampler = Sampler(StubBackend(stamps=[100 * ms, 200 * ms, 300 * ms, 400 * ms]))
    for _ in range(4):
        sampler.poll()
    # a 6 ms decode step between two polls: the sample in force when it began
    token = sampler.samples_between(250 * ms, 256 * ms, index=0)
    assert [s.t_ns for s in token] == [200 * ms]
    # a long prefill: the state it began in, and every sample during it
    prefill = sampler.samples_between(150 * ms, 300 * ms, index=0)
    assert [s.t_ns for s in prefill] == [100 * ms, 200 * ms, 300 * ms]
    both = sampler.samples_between(250 * ms, 256 * ms)
    assert [(s.index, s.t_ns) for s in both] == [(0, 200 * ms), (1, 200 * ms)]
    assert sampler.samples_between(10 * ms, 20 * ms) == []  # before the first poll


def test_stamps_share_one_clock_with_another_process():
    """The engine stamps tokens in its own process: on Linux perf_counter_ns is
    CLOCK_MONOTONIC, so a child's stamp falls between two of ours."""
    before = time.perf_counter_ns()
    child = subprocess.run([sys.executable, "-c", "import time; print(time.perf_counter_ns())"],
                           capture_output=True, text=True, check=True)
    after = time.perf_counter_ns()
    assert before < int(child.stdout) < after


def test_queue_callback_and_a_failing_poll(monkeypatch):
    seen = []
    backend = StubBackend(fail_on={2})
    sampler = Sampler(backend, pid=4242, on_tick=seen.append, queue_size=3)
    ticks = [sampler.poll() for _ in range(5)]
    assert seen == ticks
    assert ticks[1].error == "RuntimeError: driver hiccup" and ticks[1].gpus == []
    assert sampler.last_error == "RuntimeError: driver hiccup"
    assert ticks[4].error is None and len(ticks[4].gpus) == 2
    queued = [sampler.ticks.get_nowait() for _ in range(sampler.ticks.qsize())]
    assert queued == ticks[2:]  # the oldest were dropped, nobody was blocked
    assert backend.pids == [4242] * 5
    sampler.watch(None)
    sampler.poll()
    assert backend.pids[-1] is None


def test_a_machine_without_gpus_still_samples_the_host():
    sampler = Sampler(NoGpuBackend(reasons=["NVML: none"]))
    tick = sampler.poll()
    assert tick.gpus == [] and tick.host is not None and tick.host.per_core_pct
