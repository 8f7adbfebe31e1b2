"""GPU panel: per GPU utilization, memory, power, temperature and clocks as bars and sparklines.

Several GPUs stack; with several, the link matrix (topology) follows, as cells a person can
read (NVLink count and GB/s, xGMI hops, weight and GB/s), the recommended set starred and one
line per TP degree saying why. Figures a device does not report read "n/a"; a GPU the vendor
library cannot read says why in one line while the others keep updating; with no GPU backend
the panel says which libraries were tried and why they did not load.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..analysis import bar, gib, num, sparkline
from .base import Coalesced, palette, update_static

BAR = 18
SPARK = 24


def _deg(value) -> str:
    return "n/a" if value is None else f"{value:.0f}°C"


def _frac(a, b):
    return None if a is None or not b else a / b


class GpuPanel(Static, Coalesced):
    skip_hidden = True
    interval = 0.2
    DEFAULT_CSS = """
    GpuPanel { height: auto; padding: 0 1; }
    """

    def redraw_now(self) -> None:
        app = self.app
        tel = app.telemetry
        v = palette(app)
        out = Text()
        if not tel.backend:
            out.append("looking for a GPU telemetry library (NVML, amdsmi)…", style="dim")
            update_static(self, out)
            return
        if not tel.devices:
            out.append("no GPU telemetry on this machine\n", style="bold")
            for reason in tel.reasons:
                out.append(f"  {reason}\n", style="dim")
            device = app.session.model.device if app.session.model else app.desired.device
            out.append(f"the engine runs on {device}; the host panel shows its CPU load", style="dim")
            update_static(self, out)
            return
        model = app.session.model
        ranks = list(getattr(model, "gpus", None) or []) if model is not None else []
        if model is not None and model.device.startswith("cuda"):
            out.append("engine ", style="bold")
            if ranks:
                out.append(f"tp {model.tp} on GPU{'s' if len(ranks) > 1 else ''} "
                           f"{', '.join(map(str, ranks))}", style=f"bold {v['accent']}")
            else:
                out.append(f"tp {model.tp} on {', '.join(model.devices or [model.device])} (the "
                           "telemetry cannot tell which GPUs those are)", style=v["accent"])
            if getattr(model, "gpu_choice", ""):
                out.append(f": {model.gpu_choice}", style="dim")
            out.append("\n")
        for static in tel.devices:
            hist = list(tel.gpu.get(static.index, ()))
            s = hist[-1] if hist else None
            out.append(f"GPU{static.index} {static.name}", style=f"bold {v['primary']}")
            if static.index in ranks:
                out.append(f"  ◆ engine rank {ranks.index(static.index)}", style=f"bold {v['accent']}")
            out.append(f"  {tel.backend}\n", style="dim")
            error = (s.error if s is not None else None) or static.error
            if error:
                out.append(f"  n/a: {error}\n", style=v["error"])
                continue
            if s is None:
                out.append("  no sample yet\n", style="dim")
                continue
            util = [h.util_pct for h in hist]
            out.append("  util  ")
            out.append(bar(_frac(s.util_pct, 100), BAR), style=v["success"])
            out.append(f" {num(s.util_pct, 0):>4}%  ")
            out.append(sparkline(util, SPARK, 100) + "\n", style=v["success"])
            mem_total = s.mem_total or static.memory_total
            out.append("  mem   ")
            out.append(bar(_frac(s.mem_used, mem_total), BAR), style=v["primary"])
            out.append(f" {gib(s.mem_used)}/{gib(mem_total)} GiB")
            if s.process_mem is not None:
                out.append(f"  engine {gib(s.process_mem)} GiB")
            out.append("\n")
            cap = s.power_cap_w or static.power_cap_w
            power = [h.power_w for h in hist]
            out.append("  power ")
            out.append(bar(_frac(s.power_w, cap), BAR), style=v["warning"])
            out.append(f" {num(s.power_w, 0)}/{num(cap, 0)} W  ")
            out.append(sparkline(power, SPARK, cap) + "\n", style=v["warning"])
            out.append(f"  temp {_deg(s.temp_c)}  hotspot {_deg(s.temp_hotspot_c)}  "
                       f"mem {_deg(s.temp_mem_c)}\n")
            out.append(f"  clocks sm {num(s.sm_clock_mhz, 0)}/{num(static.sm_clock_max_mhz, 0)} MHz  "
                       f"mem {num(s.mem_clock_mhz, 0)}/{num(static.mem_clock_max_mhz, 0)} MHz\n")
            if s.pcie_rx_bps is not None or s.link_rx_bps is not None:
                out.append(f"  pcie rx/tx {num((s.pcie_rx_bps or 0) / 1e9, 2)}/"
                           f"{num((s.pcie_tx_bps or 0) / 1e9, 2)} GB/s")
                if s.link_rx_bps is not None:
                    out.append(f"  link rx/tx {num(s.link_rx_bps / 1e9, 1)}/"
                               f"{num((s.link_tx_bps or 0) / 1e9, 1)} GB/s")
                out.append("\n")
        topo = tel.topology
        if topo is not None and len(getattr(topo, "indices", [])) > 1:
            self._topology(out, topo, model.tp if model is not None else None, ranks, v)
        if tel.cost is not None and tel.cost.polls:
            out.append(f"telemetry poll {tel.cost.mean_ms:.2f} ms CPU mean ({tel.cost.max_ms:.2f} max, "
                       f"{tel.cost.wall_mean_ms:.2f} ms wall)",
                       style="dim")
        update_static(self, out)

    def _topology(self, out: Text, topo, tp: int | None, ranks: list[int], v: dict) -> None:
        """The link matrix with the marked TP set starred, the legend, why each set, what
        failed. The recommender must never take the panel down: its failure is one line."""
        from llmtop.profilers import topology

        out.append("\ntopology (" + topo.source + ")\n", style=f"bold {v['primary']}")
        try:
            recs = [topology.recommend(topo, k) for k in topology.tp_sizes(len(topo.indices))]
            marked = topology.marked_size(len(topo.indices), tp)
            marked_gpus = next((r.gpus for r in recs if r.k == marked), [])
        except Exception as e:
            recs, marked, marked_gpus = [], None, []
            out.append(f"  (no TP recommendation: {e})\n", style="dim")
        rows = topology.matrix_rows(topo, marked_gpus)
        width = max(len(cell) for row in rows for cell in row) + 1
        compact = 7 + width * len(topo.indices) > self.size.width - 2  # would wrap: unreadable
        if compact:
            rows = topology.matrix_rows(topo, marked_gpus, compact=True)
            width = max(len(cell) for row in rows for cell in row) + 1
        for row in rows:
            out.append(row[0].ljust(7) + "".join(cell.rjust(width) for cell in row[1:]) + "\n")
        note = f"; * = the recommended TP={marked} set" if marked else ""
        out.append(f"  {topology.legend(topo, compact)}{note}\n", style="dim")
        for rec in recs:  # ◆: the set the engine runs on
            mine = sorted(ranks) == rec.gpus
            out.append(f"{'◆ ' if mine else '  '}{rec.why}\n",
                       style=f"bold {v['accent']}" if mine else "dim")
        degraded = next((r.degraded for r in recs if r.degraded), None)
        if degraded:
            out.append(f"  recommendation {degraded}\n", style=v["warning"])
        for line in topology.link_errors(topo):
            out.append(f"  read error: {line}\n", style=v["error"])
