"""NUMA panel: balancing (with the fix), nodes, each GPU's node, the engine's affinity, warnings."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..analysis import gib
from .base import Coalesced, palette, update_static


def cpulist(cpus) -> str:
    from llmtop.profilers.report import format_cpulist

    return format_cpulist(cpus) if cpus else "none"


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
            for gpu, node in sorted(st.gpu_nodes.items()):
                where = f"node {node}" if node >= 0 else "node unknown (single node or VM)"
                local = st.local.get(gpu)
                verdict = ("engine local ✓" if local else "engine on the far node ✗" if local is False
                           else "")
                style = v["error"] if local is False else ""
                out.append(f"  GPU{gpu} → {where}  ", style=style)
                out.append(verdict + "\n", style=v["success"] if local else style)
        else:
            out.append("GPUs       none to place\n", style="dim")
        if st.pid is not None:
            aff = cpulist(st.affinity) if st.affinity is not None else "n/a"
            out.append(f"engine     pid {st.pid} may run on cpus {aff}\n")
        else:
            out.append("engine     not running\n", style="dim")
        far = [g for g, ok in st.local.items() if ok is False]
        if far:
            out.append(f"⚠ the engine runs off the node of GPU {', '.join(map(str, far))}: every "
                       "host-device copy crosses the socket link; pin it to the GPU's node "
                       "(numactl --cpunodebind)\n", style=v["warning"])
        update_static(self, out)
