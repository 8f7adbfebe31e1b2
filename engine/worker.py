"""The engine process's entry point. Imports torch only inside `main`, after the spawn.

A reader thread takes commands off the pipe so that a Stop reaches a running generation and
a vanished owner (its pipe end closed) ends this process at once: no orphans.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from llmtop.engine.protocol import (Configure, Error, ErrorKind, Generate, Shutdown, Status, Stop,
                                    decode, encode)


def main(conn: Connection, log_path: str | None = None, threads_request: int | None = None,
         ui_attached: bool = False) -> None:
    """`threads_request`: the engine's CPU thread count (None: automatic, see engine/threads.py);
    `ui_attached`: a dashboard shares this machine, so automatic leaves it a core."""
    if log_path:
        _redirect_output(log_path)
    # Ctrl-C belongs to the owner, which shuts us down in order; we must not die mid-send.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()

    def emit(event: Any) -> None:
        with send_lock:
            conn.send(encode(event))

    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        while True:
            try:
                message = decode(conn.recv())
            except (EOFError, OSError):
                os._exit(0)
            except ValueError as e:
                emit(Error(ErrorKind.PROTOCOL, str(e)))
                continue
            if isinstance(message, (Stop, Shutdown)):   # a run in progress ends at its next token
                stop.set()
            inbox.put(message)

    threading.Thread(target=read, name="engine-commands", daemon=True).start()
    emit(Status("starting", "importing torch and transformers"))
    _no_process_lock_for_progress_bars()
    import torch

    from . import catalogue, spec, threads
    from .runner import Engine

    # before the first parallel op, so OpenMP builds its team once at this size
    thread_plan = threads.plan(threads_request, torch.get_num_threads(), threads.usable_cpus(),
                               ui_attached)
    torch.set_num_threads(thread_plan.threads)
    engine = Engine(emit, stop, thread_plan=thread_plan)
    handlers = {Configure: engine.configure, Generate: engine.generate}  # Stop: the reader's
    emit(Status("ready", "waiting for a configuration"))
    while True:
        message = inbox.get()
        try:
            if isinstance(message, Shutdown):
                engine.close()  # tensor-parallel followers end with us (engine/tp.py)
                conn.close()
                # no interpreter teardown (torch's takes ~0.3 s): the owner's quit waits on it
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            handler = handlers.get(type(message))
            if handler is not None:
                handler(message)
        except (spec.ModelSpecError, catalogue.OptionError) as e:
            emit(Error(ErrorKind.CONFIG, str(e)))
            emit(Status("ready" if engine.loaded else "error", str(e)))
        except MemoryError:
            emit(Error(ErrorKind.OOM, "out of host memory"))
            emit(Status("ready" if engine.loaded else "error", "out of host memory"))
        except torch.OutOfMemoryError as e:  # e.g. while loading or preparing a request
            lines = str(e).strip().splitlines()
            emit(Error(ErrorKind.OOM, f"out of device memory: {lines[0] if lines else ''}"[:300]))
            emit(Status("ready" if engine.loaded else "error", "out of device memory"))
        except Exception as e:  # the owner shows one line; the traceback goes to stderr
            traceback.print_exc()
            lines = str(e).strip().splitlines()
            emit(Error(ErrorKind.INTERNAL, f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]))
            emit(Status("error", type(e).__name__))


def _no_process_lock_for_progress_bars() -> None:
    """tqdm (transformers' and hub progress bars) creates a multiprocessing lock on first use;
    an engine that is terminated then leaks its semaphore, and Python's resource tracker prints
    "leaked semaphore objects" on the owner's terminal after quit. One process needs a thread
    lock only."""
    try:
        import tqdm
    except ImportError:
        return
    tqdm.tqdm.set_lock(threading.RLock())


def _redirect_output(path: str) -> None:
    """Library chatter (progress bars, warnings, tracebacks) goes to a log, not the owner's screen."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
