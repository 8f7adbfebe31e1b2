"""A Sampler in a child process, for callers that must outlive the vendor library.

On 4 x H200 (driver 580) `llmtop bench` died three times with SIGSEGV while its sampler thread was
inside NvmlBackend.sample, each time the engine's processes changed (docs/tp-study.md); the cause
was not found. In a child process such a crash costs the power readings from then on, not the
sweep. The child is forked before the caller starts any thread, so it inherits the backend
factory as the caller sees it (tests replace it); its clock, perf_counter_ns, is the machine's
monotonic clock, so its sample stamps compare with the engine's token stamps as before.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from . import gpu
from .gpu import BackendUnavailable, GpuSample, GpuStatic
from .sampler import Sampler

ANSWER_TIMEOUT_S = 30.0   # a poll of 4 H200s took ~270 ms before the NVLink turns: ample


class SamplerDied(RuntimeError):
    """The child is gone (a crash in the vendor library) or stopped answering."""


class SamplerProcess:
    """Polls the GPUs at `hz` in a child; `samples_between` answers like Sampler's."""

    def __init__(self, hz: float = 10.0, history: int = 6000) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, hz, history), name="llmtop-sampler",
                                   daemon=True)
        self.process.start()
        child.close()
        kind, payload = self._ask(None)
        if kind == "unavailable":
            self.close()
            raise BackendUnavailable(payload)
        self.backend_name: str = payload["backend"]
        self.devices: list[GpuStatic] = payload["devices"]
        self.versions: dict[str, str] = payload["versions"]
        self.topology: dict[str, Any] | None = payload["topology"]
        self.topology_error: str = payload["topology_error"]

    def samples_between(self, t0_ns: int, t1_ns: int, index: int | None = None) -> list[GpuSample]:
        return self._ask(("between", t0_ns, t1_ns, index))

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1)
        self._conn.close()

    def _ask(self, request: tuple | None) -> Any:
        try:
            if request is not None:
                self._conn.send(request)
            if self._conn.poll(ANSWER_TIMEOUT_S):
                return self._conn.recv()
        except (EOFError, OSError, ValueError):
            pass
        self.process.join(1)
        code = self.process.exitcode
        if code is None:
            self.process.kill()
            raise SamplerDied(f"the GPU sampler process stopped answering for {ANSWER_TIMEOUT_S:.0f} s")
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise SamplerDied(f"the GPU sampler process died ({how})")


def _serve(conn: Any, hz: float, history: int) -> None:
    """The child: one backend and its Sampler thread; answers until told to stop or orphaned."""
    try:
        backend = gpu.detect_backend()
        devices = backend.devices()
    except Exception as e:
        conn.send(("unavailable", f"no GPU telemetry ({type(e).__name__}: {e})"))
        return
    if not devices:
        reasons = getattr(backend, "reasons", None) or []
        conn.send(("unavailable", "no GPU telemetry: " + ("; ".join(reasons) if reasons else "no GPU found")))
        return
    started: dict[str, Any] = {"backend": getattr(backend, "name", ""), "devices": devices,
                               "versions": {}, "topology": None, "topology_error": ""}
    try:
        started["versions"] = backend.describe()
    except Exception:
        pass
    if len(devices) > 1:  # the link matrix tensor-parallel sets are chosen from
        try:
            from .report import topology_dict

            started["topology"] = topology_dict(backend.topology())
        except Exception as e:  # a vendor library that cannot say must not stop a sweep
            started["topology_error"] = f"{type(e).__name__}: {e}"
    sampler = Sampler(backend, hz=hz, history=history).start()
    conn.send(("started", started))
    try:
        while True:
            request = conn.recv()
            if request[0] == "between":
                conn.send(sampler.samples_between(*request[1:]))
            else:
                break
    except (EOFError, OSError):
        pass   # the caller is gone
    finally:
        sampler.stop()
        try:
            backend.close()
        except Exception:
            pass
