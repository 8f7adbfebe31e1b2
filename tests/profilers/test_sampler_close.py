"""Quitting with telemetry running: Sampler.close() neither waits out a poll period nor a
stuck vendor call, and the backend is closed once, after the last poll, never under one."""

from __future__ import annotations

import threading
import time

from llmtop.profilers.gpu import GpuSample, GpuStatic
from llmtop.profilers.sampler import Sampler
from llmtop.profilers.topology import TopologyMatrix


class GatedBackend:
    """One GPU whose sample() blocks while `gate` is closed (a driver call stuck on a lost
    GPU); records whether close() ever ran during a sample()."""

    name = "gated"

    def __init__(self, close_raises: bool = False) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.in_sample = threading.Event()
        self.sampling = False
        self.closes = 0
        self.closed_while_sampling = False
        self.close_raises = close_raises

    def devices(self) -> list[GpuStatic]:
        return [GpuStatic(index=0, name="g", vendor="none")]

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        self.sampling = True
        self.in_sample.set()
        self.gate.wait()
        self.sampling = False
        return [GpuSample(t_ns=time.perf_counter_ns(), index=0)]

    def topology(self) -> TopologyMatrix:
        return TopologyMatrix(source="gated", indices=[], links=[])

    def describe(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self.closed_while_sampling |= self.sampling
        self.closes += 1
        if self.close_raises:
            raise RuntimeError("NVMLError_Unknown: Unknown Error")


def test_close_between_polls_does_not_wait_for_the_next_poll():
    """At 0.2 Hz the thread sleeps 5 s between polls; close() ends it at once: the thread is
    gone and the backend closed when close() returns, long before a period has passed."""
    backend = GatedBackend()
    sampler = Sampler(backend, hz=0.2).start()
    started = time.perf_counter()
    assert sampler.close() is True
    assert time.perf_counter() - started < sampler.period_ns / 1e9 / 2
    assert not sampler._thread.is_alive() and backend.closes == 1


def test_close_during_a_stuck_poll_returns_and_the_thread_closes_the_backend_after_it():
    backend = GatedBackend()
    sampler = Sampler(backend, hz=50)
    backend.gate.clear()
    sampler.start()
    assert backend.in_sample.wait(5)
    assert sampler.close(timeout=0.05) is False   # the caller is not held by the stuck call
    assert backend.closes == 0                      # and the library is not shut under it
    backend.gate.set()
    sampler._thread.join(5)
    assert not sampler._thread.is_alive()
    assert backend.closes == 1 and not backend.closed_while_sampling
    assert sampler.close() is True and backend.closes == 1  # once only


def test_a_close_that_raises_is_kept_not_raised():
    backend = GatedBackend(close_raises=True)
    sampler = Sampler(backend, hz=10)
    assert sampler.close() is True
    assert sampler.last_error == "close: RuntimeError: NVMLError_Unknown: Unknown Error"
