"""A step profile: the device's busy/idle split per step and the top kernels by device time."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..analysis import COLLECTIVE_BOUND_PCT, bar, next_step
from ..widgets.base import palette


def verdict(profile: Any, opts: dict[str, str]) -> str:
    """One line on what the split means: ranks waiting on each other first, since with tensor
    parallelism the busy share counts the collectives' kernels as work. `opts`: the profiled
    run's options, so the advice names only what it has not applied."""
    if not profile.step_ms:
        return "no step was profiled"
    tp = getattr(profile, "tp", 1)
    if tp > 1 and profile.collective_pct >= COLLECTIVE_BOUND_PCT:
        return (f"collective-bound: {profile.collective_pct:.0f}% of each decode step in "
                f"all-reduce across {tp} ranks: faster links (NVLink) or fewer ranks help more "
                "than faster kernels")
    busy = profile.busy_ms / profile.step_ms
    what = "GPU" if profile.device == "gpu" else "CPU inside ATen ops"
    if busy < 0.6:
        return (f"{what} busy {busy:.0%} of each step: the rest is launch and Python overhead "
                "between kernels (launch-bound"
                + next_step(opts, [("compile", "full", "compile=full with kv=static"),
                                   ("backend", "native", "backend=native")]) + ")")
    return f"{what} busy {busy:.0%} of each step: the kernels themselves bound the step"


class ProfileScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,f", "dismiss", "Close")]
    DEFAULT_CSS = """
    ProfileScreen { align: center middle; }
    ProfileScreen > VerticalScroll { width: 120; max-width: 95%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 0 1; }
    """

    def __init__(self, profile: Any, opts: dict[str, str]) -> None:
        super().__init__()
        self.profile, self.opts = profile, opts

    def compose(self) -> ComposeResult:
        p = self.profile
        v = palette(self.app)
        head = Text()
        head.append(f"step profile · run {p.run_id} · {p.steps} steps on the {p.device}\n", style="bold")
        head.append(f"per step {p.step_ms:.2f} ms: busy {p.busy_ms:.2f} ms, idle {p.idle_ms:.2f} ms\n")
        frac = p.busy_ms / p.step_ms if p.step_ms else None
        head.append(bar(frac, 60), style=f"{v['success']} on {v['panel']}")
        head.append(f"  {0 if frac is None else frac:.0%} busy\n")
        if getattr(p, "tp", 1) > 1:
            what = "NCCL kernels" if p.device == "gpu" else "gloo all-reduce / all-gather"
            head.append(f"collectives over {p.tp} ranks ({what}): {p.collective_ms:.2f} ms of each "
                        f"decode step, {p.collective_calls} calls\n")
            head.append(bar(p.collective_pct / 100, 60), style=f"{v['warning']} on {v['panel']}")
            head.append(f"  {p.collective_pct:.0f}% of each decode step in all-reduce\n")
        head.append(verdict(p, self.opts) + "\n", style=v["accent"])
        table = Table(box=box.SIMPLE_HEAD, expand=True, header_style=f"bold {v['primary']}")
        table.add_column("kernel / op", overflow="ellipsis", no_wrap=True, ratio=1)
        table.add_column("calls", justify="right")
        table.add_column(f"device ms ({p.steps} steps)", justify="right")
        table.add_column("% of device time", justify="right")
        for k in p.top_kernels:
            table.add_row(str(k.get("name", "")), str(k.get("calls", "")),
                          f"{k.get('device_ms', 0):.3f}", f"{k.get('pct', 0):.1f}")
        host = None
        if p.device == "gpu" and getattr(p, "top_host_ops", None):
            host = Table(box=box.SIMPLE_HEAD, expand=True, header_style=f"bold {v['primary']}")
            host.add_column("host op (own CPU time: dispatch, launches, plan building)",
                            overflow="ellipsis", no_wrap=True, ratio=1)
            host.add_column("calls", justify="right")
            host.add_column("CPU ms", justify="right")
            host.add_column("% of host time", justify="right")
            for k in p.top_host_ops[:8]:
                host.add_row(str(k.get("name", "")), str(k.get("calls", "")),
                             f"{k.get('cpu_ms', 0):.3f}", f"{k.get('pct', 0):.1f}")
        tail = Text(f"trace: {p.trace_path} (open in Perfetto or chrome://tracing)", style="dim")
        with VerticalScroll():
            yield Static(head)
            yield Static(table)
            if host is not None:
                yield Static(host)
            yield Static(tail)
