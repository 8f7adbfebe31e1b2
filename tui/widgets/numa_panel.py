"""NUMA panel: balancing (with the fix), nodes, and per GPU its node (with the source: NVML,
amdsmi or sysfs), whether the engine's threads and memory are on it, and the one command that
fixes a mismatch."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from ..analysis import gib
from .base import Coalesced, palette, update_static


def cpulist(cpus) -> str:
    from llmtop.profilers.report import format_cpulist

    return format_cpulist(cpus) if cpus else "none"


_VERDICT = {True: "✓ on it", False: "✗ off it", None: "? unknown"}


def relaunch_command() -> str:
    """The command line this dashboard was started with, as numactl should rerun it."""
    argv = sys.argv
    path = Path(argv[0])
    if path.name == "llmtop" or (path.name == "__main__.py" and path.parent.name == "llmtop"):
        return shlex.join(["llmtop", *argv[1:]])
    return "llmtop"


def engine_gpus(app) -> list[int] | None:
    """The GPUs the engine's ranks run on when known; None: judge every GPU."""
    model = getattr(app.session, "model", None)
    ranks = list(getattr(model, "gpus", None) or []) if model is not None else []
    return ranks or None


class NumaPanel(Static, Coalesced):
    skip_hidden = True
    DEFAULT_CSS = """
    NumaPanel { height: auto; padding: 0 1; }
    """

    def redraw_now(self) -> None:
        app = self.app
        v = palette(app)
        st = app.telemetry.numa
        out = Text()
        if st is None:
            out.append("reading /proc and /sys…", style="dim")
            update_static(self, out)
            return
        out.append("balancing  ", style="bold")
        if st.balancing is None:
            out.append("unknown (no /proc/sys/kernel/numa_balancing)\n", style="dim")
        elif st.balancing == 0:
            out.append("off (0): good for GPU inference\n", style=v["success"])
        else:
            out.append(f"ON ({st.balancing})\n", style=f"bold {v['error']}")
        if st.warning:
            out.append(f"⚠ {st.warning}\n", style=v["warning"])
        out.append(f"nodes      {len(st.nodes)}\n", style="bold")
        for node in st.nodes:
            mem = (f"{gib(node.mem_total)} GiB, {gib(node.mem_free)} free"
                   if node.mem_total is not None else "memory n/a")
            out.append(f"  node{node.id}  cpus {cpulist(node.cpus)}  {mem}\n")
        if st.gpu_nodes:
            out.append("GPUs\n", style="bold")
            self._gpus(out, st, v)
        else:
            out.append("GPUs       none to place\n", style="dim")
        if st.pid is not None:
            aff = cpulist(st.affinity) if st.affinity is not None else "n/a"
            out.append(f"engine     pid {st.pid} may run on cpus {aff}\n")
        else:
            out.append("engine     not running\n", style="dim")
        update_static(self, out)

    def _gpus(self, out: Text, st, v: dict) -> None:
        """One line per GPU: node and source; for the engine's GPUs (all, when not known) the
        threads and memory verdicts and, on a mismatch, the command that fixes it."""
        from llmtop.profilers.numa import fix_command, memory_local, memory_share

        mine = engine_gpus(self.app)
        sources = getattr(st, "gpu_node_sources", {}) or {}
        for gpu, node in sorted(st.gpu_nodes.items()):
            source = sources.get(gpu)
            where = (f"node {node}" + (f" ({source})" if source else "") if node >= 0
                     else "node unknown (no vendor or sysfs answer)")
            out.append(f"  GPU{gpu} → {where}", style="" if node >= 0 else "dim")
            if st.pid is None or (mine is not None and gpu not in mine):
                out.append("\n")
                continue
            threads, memory = st.local.get(gpu), memory_local(st, gpu)
            share = memory_share(st, node) if node >= 0 else None
            out.append("\n   ")
            for label, verdict in (("threads", threads), ("memory", memory)):
                style = v["success"] if verdict else v["error"] if verdict is False else "dim"
                out.append(f"  {label} ")
                out.append(_VERDICT[verdict], style=style)
            if share is not None:
                out.append(f" ({share:.0%} of its pages)", style="dim")
            out.append("\n")
            fix = fix_command(st, gpu, relaunch_command())
            if fix:
                out.append(f"    fix: {fix}\n", style=v["warning"])
