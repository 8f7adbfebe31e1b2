"""Host panel: per-core CPU, memory, load, the engine process, and this dashboard's own CPU."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..analysis import bar, gib, num, sparkline
from .base import Coalesced, palette, update_static

BAR = 20


class HostPanel(Static, Coalesced):
    skip_hidden = True
    watches = ("telemetry",)
    interval = 0.2
    DEFAULT_CSS = """
    HostPanel { height: auto; padding: 0 1; }
    """

    def redraw_now(self) -> None:
        app = self.app
        tel = app.telemetry
        v = palette(app)
        out = Text()
        if not tel.host:
            out.append("no host sample yet (the sampler polls a few times a second)", style="dim")
            update_static(self, out)
            return
        s = tel.host[-1]
        cols = 2 if len(s.per_core_pct) > 8 else 1
        cells = []
        for i, pct in enumerate(s.per_core_pct):
            style = v["error"] if pct >= 90 else v["warning"] if pct >= 60 else v["success"]
            cell = Text(f"cpu{i:<3}")
            cell.append(bar(pct / 100, BAR if cols == 1 else BAR // 2), style=style)
            cell.append(f" {pct:3.0f}%")
            cells.append(cell)
        if len(cells) > 64:  # a big server: averages of core groups keep the panel readable
            cells = cells[:64]
            out.append(f"(first 64 of {len(s.per_core_pct)} cores)\n", style="dim")
        for i in range(0, len(cells), cols):
            row = Text("   ").join(cells[i:i + cols])
            out.append_text(row)
            out.append("\n")
        out.append(f"all    ", style="bold")
        out.append(bar(s.cpu_pct / 100, BAR), style=v["primary"])
        out.append(f" {s.cpu_pct:3.0f}%  ")
        out.append(sparkline([h.cpu_pct for h in tel.host], 24, 100) + "\n", style=v["primary"])
        out.append("memory ", style="bold")
        out.append(bar(s.mem_used / s.mem_total if s.mem_total else None, BAR), style=v["primary"])
        out.append(f" {gib(s.mem_used)}/{gib(s.mem_total)} GiB\n")
        if s.load_avg:
            out.append(f"load   {s.load_avg[0]:.2f} {s.load_avg[1]:.2f} {s.load_avg[2]:.2f}\n")
        if s.pid is not None:
            out.append(f"engine pid {s.pid}: cpu {num(s.proc_cpu_pct, 0)}% (of one core)  "
                       f"rss {gib(s.proc_rss)} GiB\n")
        else:
            out.append("engine: not running\n", style="dim")
        out.append(f"dashboard: cpu {num(tel.ui_cpu_pct, 1)}% (of one core)", style="dim")
        update_static(self, out)
