"""A background thread that polls the GPU backend and the host at a fixed rate.

Samples carry time.perf_counter_ns() stamps, the clock the engine stamps tokens with. On Linux
that is CLOCK_MONOTONIC, one clock for the whole system, so a stamp taken in the engine process
compares directly with one taken here: samples_between() gives the power and clocks in force
while a given token was produced. The thread measures what each poll costs, so the dashboard
can show that watching does not disturb what it watches.
"""

from __future__ import annotations

import bisect
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .gpu import GpuBackend, GpuSample
from .host import HostMonitor, HostSample


@dataclass
class Tick:
    """Everything one poll produced."""

    t_ns: int
    gpus: list[GpuSample] = field(default_factory=list)
    host: HostSample | None = None
    cost_ms: float = 0.0   # CPU time the poll took on the sampler thread (user + system)
    wall_ms: float = 0.0   # its wall time: adds waits for the driver and for the GIL
    error: str | None = None


@dataclass
class PollCost:
    """The sampler's own cost over its recent polls (the cost window).

    The cost is the CPU time a poll takes from the machine. Its wall time is longer whenever
    the process's other threads hold the GIL (a busy engine or UI thread): that is latency of
    the reading, not load on the machine, so it is kept apart as `wall_mean_ms`.
    """

    polls: int
    mean_ms: float
    max_ms: float
    last_ms: float
    wall_mean_ms: float = 0.0


class Sampler:
    """Polls at `hz` into ring buffers of `history` polls (default 10 minutes at 10 Hz).

    Consumers either pass `on_tick` (called on the sampler thread: keep it short, e.g. hand the
    tick to the UI's own queue) or read `ticks`, a bounded queue.Queue that drops the oldest tick
    when nobody drains it.
    """

    def __init__(self, backend: GpuBackend, hz: float = 10.0, pid: int | None = None,
                 history: int = 6000, host: HostMonitor | None = None,
                 on_tick: Callable[[Tick], None] | None = None, queue_size: int = 100) -> None:
        if hz <= 0:
            raise ValueError("hz must be positive")
        self.backend = backend
        self.period_ns = int(1e9 / hz)
        self.pid = pid
        self.host = host if host is not None else HostMonitor(pid)
        self.on_tick = on_tick
        self.ticks: queue.Queue[Tick] = queue.Queue(maxsize=queue_size)
        self._gpu = {d.index: deque(maxlen=history) for d in backend.devices()}
        self._host: deque[HostSample] = deque(maxlen=history)
        self._costs: deque[float] = deque(maxlen=min(history, 600))
        self._polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._close_lock = threading.Lock()
        self.last_error: str | None = None

    def watch(self, pid: int | None) -> None:
        """Follows a new engine process (the engine restarted), or none."""
        self.pid = pid
        self.host.watch(pid)

    def poll(self) -> Tick:
        """One poll, stored and published; the thread calls this, tests may too."""
        start = time.perf_counter_ns()
        cpu_start = time.thread_time_ns()
        tick = Tick(t_ns=start)
        try:
            tick.gpus = self.backend.sample(self.pid)
            tick.host = self.host.sample()
        except Exception as exc:  # a vendor library hiccup must not kill the thread
            tick.error = f"{type(exc).__name__}: {exc}"
            self.last_error = tick.error
        tick.cost_ms = (time.thread_time_ns() - cpu_start) / 1e6
        tick.wall_ms = (time.perf_counter_ns() - start) / 1e6
        with self._lock:
            for s in tick.gpus:
                self._gpu.setdefault(s.index, deque(maxlen=self._host.maxlen)).append(s)
            if tick.host is not None:
                self._host.append(tick.host)
            self._costs.append((tick.cost_ms, tick.wall_ms))
            self._polls += 1
        self._publish(tick)
        return tick

    def _publish(self, tick: Tick) -> None:
        if self.on_tick is not None:
            self.on_tick(tick)
        while True:
            try:
                self.ticks.put_nowait(tick)
                return
            except queue.Full:
                try:
                    self.ticks.get_nowait()
                except queue.Empty:
                    pass

    def _run(self) -> None:
        """Polls on a fixed grid; a late poll skips the missed slots instead of bursting."""
        next_ns = time.perf_counter_ns() + self.period_ns
        try:
            while not self._stop.wait(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9)):
                self.poll()
                next_ns += self.period_ns
                now = time.perf_counter_ns()
                if next_ns <= now:
                    next_ns += ((now - next_ns) // self.period_ns + 1) * self.period_ns
        finally:
            if self._closing:  # close() asked while a poll was running: release it here
                self._close_backend()

    def start(self) -> Sampler:
        """Starts the thread (a daemon: it never holds the process open)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="llmtop-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self, timeout: float = 0.1) -> bool:
        """Stops polling and releases the backend without making the caller (the UI thread
        quitting) wait on the vendor library; returns whether the thread has ended.

        Between polls the thread wakes at once. Inside a slow poll (a lost GPU can block a
        driver call for seconds) close() returns after `timeout` and the thread closes the
        backend itself when that poll ends: the library is never shut down under a running
        call (NVML has crashed the process that way), and the thread is a daemon, so it never
        holds the process open."""
        self._closing = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            if thread.is_alive():
                return False
        self._close_backend()
        return True

    def _close_backend(self) -> None:
        """backend.close() once, whoever gets here first; a failing close is one line kept."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.backend.close()
        except Exception as exc:
            self.last_error = f"close: {type(exc).__name__}: {exc}"

    def cost(self) -> PollCost:
        with self._lock:
            costs = list(self._costs)
            polls = self._polls
        if not costs:
            return PollCost(polls=0, mean_ms=0.0, max_ms=0.0, last_ms=0.0)
        cpu = [c for c, _ in costs]
        return PollCost(polls=polls, mean_ms=sum(cpu) / len(cpu), max_ms=max(cpu),
                        last_ms=cpu[-1], wall_mean_ms=sum(w for _, w in costs) / len(costs))

    def gpu_history(self, index: int) -> list[GpuSample]:
        """Every buffered sample of one GPU, oldest first."""
        with self._lock:
            return list(self._gpu.get(index, ()))

    def host_history(self) -> list[HostSample]:
        with self._lock:
            return list(self._host)

    def latest(self) -> Tick | None:
        """The newest GPU samples and host sample, without waiting for the queue."""
        with self._lock:
            gpus = [d[-1] for d in self._gpu.values() if d]
            host = self._host[-1] if self._host else None
        if not gpus and host is None:
            return None
        return Tick(t_ns=max([s.t_ns for s in gpus] + ([host.t_ns] if host else [])),
                    gpus=gpus, host=host)

    def samples_between(self, t0_ns: int, t1_ns: int, index: int | None = None
                        ) -> list[GpuSample]:
        """The GPU samples that describe the interval [t0_ns, t1_ns]: the last one taken at or
        before t0_ns (the state the interval began in) and every one taken inside it.

        A decode step (5-40 ms) is shorter than the 100 ms poll period, so most tokens get just
        that first sample; that is the honest resolution. `index` None means every GPU.
        """
        with self._lock:
            series = [list(self._gpu[i]) for i in sorted(self._gpu) if index in (None, i)]
        out = []
        for samples in series:
            stamps = [s.t_ns for s in samples]
            first = max(bisect.bisect_right(stamps, t0_ns) - 1, 0)
            last = bisect.bisect_right(stamps, t1_ns)
            out.extend(samples[first:last])
        return out
