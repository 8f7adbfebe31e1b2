"""Live per-token latency: decode steps as a line, TTFT as points, engine events as markers.

Plotext redraws cost ~15-25 ms on a small CPU, so this widget rebuilds the figure only when
the data changed (and at most 4 times a second while tokens stream), and keeps the rendered
text for repaints caused by anything else.
"""

from __future__ import annotations

from rich.text import Text
from textual.color import Color
from textual_plotext import PlotextPlot

from .base import Coalesced

MARKER_LABEL = {"config": "cfg", "recompile": "recompile", "recompile_limit": "recompile limit",
                "graph_break": "graph break", "cudagraph": "CUDA graphs", "capture": "graph capture",
                "compile": "compile",
                "tuning": "tune"}


class LatencyPlot(PlotextPlot, Coalesced):
    interval = 1.0
    DEFAULT_CSS = """
    LatencyPlot { height: 1fr; min-height: 10; border: round $primary 50%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "latency per token (ms)"
        self._version = -1
        self._cache: tuple[tuple, Text] | None = None

    def redraw_now(self) -> None:
        self._version += 1
        self.refresh()

    def _rgb(self, name: str) -> tuple[int, int, int]:
        return Color.parse(self.app.theme_variables[name]).rgb

    def _build(self) -> None:
        session = self.app.session
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        xs, ys, tx, ty = session.plot_series()
        plt.xlabel("token step (session)")
        if not xs and not ty:
            plt.title("no tokens yet")
            return
        if xs:
            plt.plot(xs, ys, marker="braille", color=self._rgb("primary"), label="decode step")
        if tx:
            plt.scatter(tx, ty, marker="◆", color=self._rgb("accent"), label="TTFT")
        lo = min(xs[:1] + tx[:1]) if (xs or tx) else 0
        hi = max(xs[-1:] + tx[-1:]) if (xs or tx) else 1
        top = max(ys + ty) if (ys or ty) else 1.0
        run = session.current_or_last()
        roof = session.live_roofline(run) if run is not None else None
        if roof and roof.get("decode_floor_ms"):
            floor = roof["decode_floor_ms"]
            plt.hline(floor, color=self._rgb("success"))
            plt.text("decode floor", lo, floor, color=self._rgb("success"))
            top = max(top, floor)
        for mk in session.markers:
            if lo <= mk.step <= hi + 1:
                plt.vline(mk.step, color=self._rgb("warning"))
                label = MARKER_LABEL.get(mk.kind, mk.kind)
                if mk.label and mk.kind == "config":
                    label = mk.label
                plt.text(label[:24], mk.step, top, color=self._rgb("warning"))
        plt.ylim(0, top * 1.08)
        plt.xlim(lo, max(hi, lo + 1))
        if ty:
            plt.title(f"TTFT {ty[-1]:.1f} ms · last step {ys[-1]:.1f} ms" if ys else f"TTFT {ty[-1]:.1f} ms")

    def render(self) -> Text:
        key = (self._version, self.size.width, self.size.height, self.app.theme)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._build()
        text = super().render()
        self._cache = (key, text)
        return text
