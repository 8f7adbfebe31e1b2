"""EngineClient: starts the engine process and talks to it. Imports no torch.

Events arrive on a queue filled by a reader thread that also watches the process: if the
engine dies (crash, OOM kill, SIGKILL) the queue gets an `Error(ErrorKind.ENGINE_DEAD)` within a
fraction of a second instead of the owner hanging on a pipe.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable

from llmtop.engine.protocol import Configure, Error, ErrorKind, Shutdown, decode, encode

from . import spec, worker
from . import threads as engine_threads


class EngineClient:
    def __init__(self, on_event: Callable[[Any], None] | None = None,
                 log_path: str | None = None, threads: int | None = None,
                 ui_attached: bool = False) -> None:
        """`on_event`, if given, is called on the reader thread for every event (else: queue).

        The engine's stdout and stderr go to `log_path` (default: engine.log in the cache dir)
        so that library progress bars never scribble over a dashboard. `threads` fixes the
        engine's CPU thread count; None lets engine/threads.py choose, which keeps a core free
        when `ui_attached` (a dashboard competes with the engine's OpenMP team otherwise).
        """
        self.on_event = on_event
        # the environment variable reaches every engine (bench, scripts), the flag only the CLI's
        self.threads = threads if threads is not None else engine_threads.parse(engine_threads.requested(None))
        self.ui_attached = ui_attached
        self.log_path = log_path or str(spec.cache_dir() / "engine.log")
        self.events: queue.Queue = queue.Queue()
        self.process: mp.process.BaseProcess | None = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self._closing = False
        # every join and liveness check of the process goes through this lock: two threads
        # reaping one process race in multiprocessing (CPython gh-130895: one reaps it, the
        # other's join returns with exitcode None), which once made a quit look hung
        self._reap_lock = threading.Lock()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=worker.main,
                                   args=(child, self.log_path, self.threads, self.ui_attached),
                                   name="llmtop-engine",
                                   daemon=True)
        self._closing = False
        self.process.start()
        child.close()
        self._conn = parent
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        process = self.process
        if process is None:
            return False
        with self._reap_lock:
            return process.is_alive()

    def wait_exit(self, timeout: float) -> int | None:
        """The engine's exit code once it has ended; None if it still runs after `timeout`."""
        return self._wait_exit(self.process, timeout) if self.process is not None else None

    def _wait_exit(self, process: mp.process.BaseProcess, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            with self._reap_lock:   # in short slices: alive() on another thread waits little
                process.join(max(0.0, min(0.1, deadline - time.monotonic())))
                code = process.exitcode
            if code is not None or time.monotonic() >= deadline:
                return code

    def send(self, command: Any) -> None:
        """Sends a command; a dead engine turns into an error event, not an exception."""
        try:
            self._conn.send(encode(command))
        except (OSError, AttributeError, BrokenPipeError):
            self._deliver(Error(ErrorKind.ENGINE_DEAD, "the engine is not running", recoverable=True))

    def get(self, timeout: float | None = None) -> Any:
        """The next event (queue mode); raises queue.Empty after `timeout`."""
        return self.events.get(timeout=timeout)

    def close(self, timeout: float = 3.0) -> None:
        """Asks the engine to exit, then makes sure it has: no orphan survives this call."""
        if self.process is None:
            return
        self._closing = True
        if self.alive():
            try:
                self._conn.send(encode(Shutdown()))
            except OSError:
                pass
            self.wait_exit(timeout)
        if self.alive():
            self.process.terminate()
            self.wait_exit(1.0)
        if self.alive():
            self.process.kill()
            self.wait_exit(1.0)
        self._conn.close()
        if self._reader is not None:
            self._reader.join(1.0)
        self.process = None

    def _deliver(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)
        else:
            self.events.put(event)

    def _read(self) -> None:
        conn, process = self._conn, self.process
        while True:
            data = None
            try:
                ready = wait([conn, process.sentinel], timeout=0.5)
            except OSError:
                return
            if conn in ready:
                try:
                    data = conn.recv()
                except (EOFError, OSError):
                    data = None
                if data is not None:
                    try:
                        event = decode(data)
                    except ValueError as e:   # an engine of another version: say so, keep reading
                        event = Error(ErrorKind.PROTOCOL, str(e))
                    self._deliver(event)
                    continue
            if process.sentinel in ready:
                code = self._wait_exit(process, 0.5)
                if not self._closing:
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    self._deliver(Error(ErrorKind.ENGINE_DEAD, f"the engine process died ({how})",
                                        recoverable=True))
                return


def needs_fresh_engine(applied: Configure | None, new: Configure) -> bool:
    """Whether `new` must go to a new engine process rather than the one that applied `applied`.

    A tensor-parallel group on GPUs ends with its process: on 4 x H200 (torch 2.11, NCCL), rank
    0 died with SIGSEGV when the engine replaced a 2-GPU group by a 4-GPU one, and when a group
    was torn down, while a fresh process ran the 4-GPU group fine. So another TP size, GPU set
    or device after a multi-GPU group gets a fresh engine; CPU (gloo) groups are rebuilt in place.
    """
    if applied is None or applied.tp <= 1 or not applied.device.startswith("cuda"):
        return False
    return (applied.tp, applied.gpus, applied.device) != (new.tp, new.gpus, new.device)
