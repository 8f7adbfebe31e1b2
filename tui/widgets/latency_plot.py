"""Live per-token latency: decode steps as a line (left axis), TTFT as points on their own
axis (right), engine events as markers.

Decode and prefill live on separate scales: a 17 s first TTFT must not flatten 80 ms decode
steps (issue 14.6), and the decode axis is clipped above its 98th percentile (a recompile mid
run; clipped steps are drawn at the top and counted in the title). Marker labels never
overlap: a label that would touch a newer one is left out (its line stays). Token indices are
integers.

Plotext redraws cost ~15-25 ms on a small CPU, so this widget rebuilds the figure only when
the data changed (and at most once a second while tokens stream), and keeps the rendered text
for repaints caused by anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.color import Color
from textual_plotext import PlotextPlot

from llmtop.engine.metrics import percentile

from .base import Coalesced, palette

MARKER_LABEL = {"config": "cfg", "recompile": "recompile", "recompile_limit": "recompile limit",
                "graph_break": "graph break", "cudagraph": "CUDA graphs", "capture": "graph capture",
                "compile": "compile", "failed": "failed", "tuning": "tune"}
CLIP_PCT = 98      # the decode axis tops out at 1.5x this percentile of the steps shown
AXIS_COLS = 10     # columns plotext takes for each y axis' ticks
LEGEND_COLS = len(" L ⢕⢕ decode step ")   # the legend's width, top left: no label there


def decode_top(ys: list[float], floor: float | None = None) -> float:
    """The decode axis' top: the steps' 98th percentile with headroom (never below the floor)."""
    top = 1.5 * percentile(ys, CLIP_PCT) if ys else 1.0
    return max(top, floor or 0.0, 1e-3)


def int_ticks(lo: int, hi: int, most: int) -> list[int]:
    """At most `most` integer token indices from lo to hi, at a round step."""
    span = max(1, hi - lo)
    step = 1
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if span / step <= most:
            break
    first = -(-lo // step) * step
    return list(range(first, hi + 1, step))


def place_labels(markers: list[tuple[int, str]], lo: int, hi: int, cols: int,
                 clear: int = 0) -> list[tuple[float, str]]:
    """(x, label) of the marker labels that fit without touching each other or the first
    `clear` columns (the legend's), the newest kept first; a label near the right edge ends at
    its marker instead of starting there."""
    span = max(1, hi - lo)
    placed: list[tuple[float, float]] = [(0.0, float(clear))] if clear else []
    out = []
    for step, label in sorted(markers, reverse=True):
        label = label[:max(1, cols - 1)]
        start = (step - lo) / span * cols
        if start + len(label) + 1 > cols:
            start = max(0.0, cols - len(label) - 1)
        end = start + len(label) + 1
        if any(start < b and a < end for a, b in placed):
            continue
        placed.append((start, end))
        out.append((lo + start * span / cols, label))
    return out


@dataclass
class Scales:
    decode_top: float
    ttft_top: float
    clipped: int     # decode steps above the decode axis' top


def scales(ys: list[float], ty: list[float], floor: float | None = None) -> Scales:
    top = decode_top(ys, floor)
    return Scales(top, max(ty) * 1.08 if ty else 1.0, sum(1 for y in ys if y > top))


class LatencyPlot(PlotextPlot, Coalesced):
    interval = 1.0
    watches = ("tokens", "runs", "markers")
    DEFAULT_CSS = """
    LatencyPlot { height: 1fr; min-height: 10; border: round $primary 50%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "latency per token: decode ms (left) · TTFT ms ◆ (right)"
        self._version = -1
        self._cache: tuple[tuple, Text] | None = None

    def redraw_now(self) -> None:
        self._version += 1
        self.refresh()

    def _rgb(self, name: str) -> tuple[int, int, int]:
        return Color.parse(palette(self.app)[name]).rgb

    def _build(self) -> None:
        session = self.app.model.session
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        xs, ys, tx, ty = session.plot_series()
        plt.xlabel("token step (session)")
        if not xs and not ty:
            plt.title("no tokens yet")
            return
        run = session.current_or_last()
        roof = session.live_roofline(run) if run is not None else None
        floor = roof.get("decode_floor_ms") if roof else None
        sc = scales(ys, ty, floor)
        if xs:
            plt.plot(xs, [min(y, sc.decode_top) for y in ys], marker="braille",
                     color=self._rgb("primary"), label="decode step")
        if tx:
            plt.scatter(tx, ty, marker="◆", color=self._rgb("accent"), label="TTFT", yside="right")
            plt.ylim(0, sc.ttft_top, yside="right")
        lo = min(xs[:1] + tx[:1])
        hi = max(xs[-1:] + tx[-1:])
        if floor:
            plt.hline(floor, color=self._rgb("success"))
            plt.text("decode floor", lo, floor, color=self._rgb("success"), alignment="left")
        cols = max(10, self.size.width - 2 * AXIS_COLS)
        shown = [(mk.step, mk.label if mk.kind in ("config", "failed") and mk.label
                  else MARKER_LABEL.get(mk.kind, mk.kind)) for mk in session.markers
                 if lo <= mk.step <= hi + 1]
        for step, _ in shown:
            plt.vline(step, color=self._rgb("warning"))
        for x, label in place_labels(shown, lo, max(hi, lo + 1), cols, LEGEND_COLS):
            plt.text(label, x, sc.decode_top * 0.97, color=self._rgb("warning"), alignment="left")
        plt.ylim(0, sc.decode_top * 1.04)
        plt.xlim(lo, max(hi, lo + 1))
        ticks = int_ticks(lo, max(hi, lo + 1), max(2, cols // 8))
        plt.xticks(ticks, [str(t) for t in ticks])
        title = f"TTFT {ty[-1]:.1f} ms" if ty else ""
        if ys:
            title += f"{' · ' if title else ''}last step {ys[-1]:.1f} ms"
        if sc.clipped:
            title += f" · {sc.clipped} step{'s' if sc.clipped != 1 else ''} above {sc.decode_top:.0f} ms"
        plt.title(title)

    def render(self) -> Text:
        key = (self._version, self.size.width, self.size.height, self.app.theme)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._build()
        text = super().render()
        self._cache = (key, text)
        return text
