"""How many CPU threads the engine's torch ops use, and why. Imports no torch (the CLI and the
UI use it to parse and explain; the engine passes in torch's own default).

torch splits each op over a team of OpenMP threads and waits at a barrier for the slowest
member. With one thread per usable core, any other runnable process (the dashboard, the
terminal that draws it, another job) must preempt a team member, and then every op waits for
that member's next time slice. Measured on a 2-core VM: the embedded model decoded at 44 ms
per token on 2 threads when the machine was quiet, but 84-550 ms with one other busy process,
while 1 thread stayed at 53-56 ms either way (docs/dashboard.md). A dashboard is such a process
by construction, so when one is attached the engine leaves it a core: `ui_cores` below is one
because the UI is one event loop (plus short-lived reader threads) and the terminal emulator;
both fit in one core with room to spare (the UI uses ~15 % of one).

Headless runs keep torch's default (nothing else of ours runs beside them). Either way an
explicit count wins: `--engine-threads N` or the `LLMTOP_ENGINE_THREADS` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "LLMTOP_ENGINE_THREADS"
UI_CORES = 1   # what one dashboard process and its terminal need (see above)


class ThreadsError(ValueError):
    """A thread count that is not 'auto' or a positive integer."""


@dataclass(frozen=True)
class ThreadPlan:
    threads: int        # what torch.set_num_threads gets
    default: int        # torch's own choice in this process
    usable: int         # CPUs this process may run on (affinity), not the machine's count
    reason: str         # one line for the header and `llmtop info`; empty when nothing changed


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, which containers and taskset narrow."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse(value: str | int | None) -> int | None:
    """None for 'auto' (or nothing given), else a positive count; ThreadsError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ThreadsError(f"engine threads must be 'auto' or a positive integer, not {value!r}") from None
    if n < 1:
        raise ThreadsError(f"engine threads must be at least 1, not {n}")
    return n


def requested(flag: str | int | None) -> str | int | None:
    """The flag if given, else the environment variable (so scripts can set it once)."""
    return flag if flag is not None else os.environ.get(ENV)


def plan(request: int | None, default: int, usable: int, ui_attached: bool) -> ThreadPlan:
    """The engine's thread count for `request` (None: automatic) beside a UI or not."""
    if request is not None:
        return ThreadPlan(request, default, usable, f"set by --engine-threads / {ENV}")
    if ui_attached and usable > UI_CORES and default > usable - UI_CORES:
        threads = usable - UI_CORES
        return ThreadPlan(threads, default, usable,
                          f"{usable - threads} of {usable} cores kept for the dashboard "
                          f"(--engine-threads {default} to use them)")
    return ThreadPlan(default, default, usable, "")
