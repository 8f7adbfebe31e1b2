"""The App's telemetry side: the sampler's start in a worker thread (the GPU backend, its
devices and topology, then ticks, NUMA every 20th), and the messages it posts. A mixin of
LlmtopApp."""

from __future__ import annotations

from typing import Any

from textual import work

from .messages import NumaUpdate, TelemetryReady, TelemetryTick


class TelemetryLink:
    @work(thread=True, group="telemetry")
    def _start_telemetry(self) -> None:
        try:
            self._run_telemetry()
        except Exception as e:  # the dashboard never dies of telemetry: one line, the rest runs
            self.post_message(TelemetryReady("none", [], [f"GPU telemetry failed: "
                                                          f"{type(e).__name__}: {e}"], None))

    def _run_telemetry(self) -> None:
        import psutil

        from llmtop.profilers.gpu import detect_backend
        from llmtop.profilers.sampler import Sampler

        backend = detect_backend()
        self._backend = backend
        devices = backend.devices()
        try:
            topology = backend.topology()
        except Exception:
            topology = None
        self.post_message(TelemetryReady(backend.name, devices, list(getattr(backend, "reasons", [])),
                                        topology))
        me = psutil.Process()
        me.cpu_percent(None)
        counter = [0]

        def on_tick(tick: Any) -> None:
            counter[0] += 1
            self.post_message(TelemetryTick(tick, me.cpu_percent(None), sampler.cost()))
            if counter[0] % 20 == 0:
                self._numa_now(self.engine_pid)

        # the sampler's own history sized to the panels' (its default, 6000 polls, is for
        # scripts that read samples back: here it grew for 25 minutes at 4 Hz, ~0.5 KB a poll
        # on a CPU, more per GPU)
        sampler = Sampler(backend, hz=self.telemetry_hz, pid=self.engine_pid, on_tick=on_tick,
                          history=self.telemetry.HISTORY)
        if self._closing:
            return
        self._sampler = sampler
        sampler.start()
        self._numa_now(self.engine_pid)

    def _numa_now(self, pid: int | None) -> None:
        """Reads the NUMA state (procfs/sysfs, ~1 ms); called from worker threads."""
        from llmtop.profilers.numa import numa_status

        try:
            status = numa_status(self.telemetry.devices, pid)
        except Exception as e:  # never let a sysfs surprise kill the sampler thread
            self.log.warning(f"numa_status failed: {e}")
            return
        self.post_message(NumaUpdate(status))

    def on_telemetry_ready(self, msg: TelemetryReady) -> None:
        t = self.telemetry
        t.backend, t.devices, t.reasons, t.topology = msg.backend, msg.devices, msg.reasons, msg.topology
        self.changed("telemetry")

    def on_telemetry_tick(self, msg: TelemetryTick) -> None:
        self.telemetry.add_tick(msg.tick, msg.ui_cpu_pct, msg.cost)
        self.changed("telemetry")

    def on_numa_update(self, msg: NumaUpdate) -> None:
        self.telemetry.numa = msg.status
        self.changed("numa")

    def feed_telemetry(self, backend: str, devices: list, reasons: list[str], ticks: list,
                       numa: Any = None, ui_cpu_pct: float | None = None, topology: Any = None) -> None:
        """Fixed telemetry for tests and replays, without a sampler."""
        t = self.telemetry
        t.backend, t.devices, t.reasons, t.topology = backend, devices, reasons, topology
        for tick in ticks:
            t.add_tick(tick, ui_cpu_pct)
        t.numa = numa
        self.redraw_all()

