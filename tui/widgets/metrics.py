"""Metrics: TTFT, TPOT mean/p50/p90/p99, tok/s, end-to-end, % of the roofline floors, bottleneck.

Two columns: the current run (live, from the stamps so far, same formulas as the engine) and
the session's runs of the same configuration. While another configuration is being applied,
the figures are marked as the previous configuration's. Labels are short and may be cut;
figures never are (issue 14.7).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..analysis import ENDPOINT, bottleneck, num
from .base import Coalesced, palette


def _tpot_steady(mt: dict[str, Any]) -> str:
    """Steady TPOT (decode gaps that overlap no marked stall) and the stall count, where the
    record carries them (engine/metrics.py run_metrics)."""
    steady, stalls = mt.get("tpot_steady_ms"), mt.get("stalls")
    if steady is None or steady != steady:   # None or NaN: the engine does not report it
        return "n/a"
    text = num(steady if mt.get("n_tokens", 2) > 1 else None, 2, "ms")
    if stalls is not None and stalls == stalls:
        text += f" · {num(stalls, 0)} stall{'s' if stalls != 1 else ''}"
    return text


def metric_rows(mt: dict[str, Any] | None, roof: dict[str, Any] | None,
                mem_bw: float | None, stalls_marked: bool = True) -> list[str]:
    """The figures of LABELS; `stalls_marked` False (an attached server, whose stalls nobody
    marks) claims no steady TPOT."""
    if not mt:
        return ["n/a"] * len(LABELS)
    if roof and not any(isinstance(x, (int, float)) and x == x for x in roof.values()):
        roof = None   # no ceilings known (an attached server): every floor is n/a
    itl = mt.get("itl") or {}
    pct = lambda key: "n/a" if not roof else num(roof.get(key), 0) + "%"  # noqa: E731
    decode = bandwidth = "n/a"
    if roof:
        decode = f"{pct('decode_pct')} of {num(roof.get('decode_floor_ms'), 2)} ms"
        bandwidth = f"{num(roof.get('achieved_gb_s'), 1)}" + (f" / {mem_bw:.0f} GB/s" if mem_bw else " GB/s")
    prefill = "n/a" if not roof else f"{pct('prefill_pct')} of {num(roof.get('prefill_floor_ms'), 2)} ms"
    tokens = f"{mt.get('n_tokens', 0)}"
    if "batch" in mt:
        tokens += f" × bs {mt['batch']}"
    decoded = mt.get("n_tokens", 2) > 1   # one token has no decode step: no TPOT, not 0 ms
    return [
        num(mt.get("ttft_ms"), 1, "ms"),
        num(mt.get("tpot_ms") if decoded else None, 2, "ms"),
        _tpot_steady(mt) if stalls_marked else "n/a",
        f"{num(itl.get('p50'), 1)} / {num(itl.get('p90'), 1)} / {num(itl.get('p99'), 1)}",
        num(mt.get("decode_tokens_per_s") if decoded else None, 1),
        num(mt.get("tokens_per_s"), 1),
        num(mt.get("e2e_ms"), 0, "ms"),
        tokens,
        decode,
        bandwidth,
        prefill,
    ]


LABELS = ["TTFT", "TPOT mean", "TPOT steady", "ITL p50/90/99", "decode tok/s", "all tok/s",
          "end-to-end", "tokens", "decode floor", "bandwidth", "prefill floor"]
# what a short terminal keeps: the latency figures and how far they are from the floor
COMPACT_LABELS = ("TTFT", "TPOT mean", "ITL p50/90/99", "decode tok/s", "decode floor")
CHROME = 4             # border (2), the table's header and its rule
NOTE_ROWS = 5          # the bottleneck and guard lines, wrapped
COMPACT_NOTE_ROWS = 3  # at 80 columns: bottleneck in two lines, guard in one
GUARD_STYLE = {"identical": "success", "equivalent": "secondary", "diverged": "error"}


def guard_line(g: Any) -> tuple[str, str]:
    """(text, colour variable) of the engine's guard: three states, red only for diverged."""
    diff = "" if getattr(g, "max_logit_diff", None) is None else f", max |Δlogit| {g.max_logit_diff:.3g}"
    status = g.status
    if status == "identical":
        return f"identical to {g.baseline} over {g.tokens} tokens{diff}", "success"
    if status == "equivalent":
        margin = getattr(g, "margin", None)
        tol = getattr(g, "tolerance", None)
        why = (f" (top-1 margin {margin:.3g} ≤ tolerance {tol:.3g})"
               if margin is not None and tol is not None else "")
        return (f"equivalent to {g.baseline}: differs at token {g.diverged_at} within the "
                f"dtype's rounding{why}"), "secondary"
    return f"diverged from {g.baseline} at token {g.diverged_at}{diff}", "error"


class MetricsPanel(Static, Coalesced):
    interval = 0.5
    skip_hidden = True   # two instances (side by side, stacked): only the shown one draws
    watches = ("tokens", "runs", "model", "device", "guard", "telemetry", "profile", "status")
    DEFAULT_CSS = f"""
    MetricsPanel {{ height: {CHROME + len(LABELS) + NOTE_ROWS}; border: round $primary 50%; padding: 0 1; }}
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "metrics"
        self.compact = False

    @staticmethod
    def full_height() -> int:
        return CHROME + len(LABELS) + NOTE_ROWS

    @staticmethod
    def compact_height() -> int:
        return CHROME + len(COMPACT_LABELS) + COMPACT_NOTE_ROWS

    def set_compact(self, compact: bool) -> None:
        """Fewer rows on short terminals, so the token stream keeps room above the fold."""
        self.compact = compact
        self.styles.height = self.compact_height() if compact else None

    def figures(self) -> tuple[Any, list[str], list[str], dict | None, dict | None]:
        """(run, this run's figures, this configuration's figures, run metrics, session metrics)."""
        session = self.app.model.session
        run = session.current_or_last()
        mem_bw = session.device.mem_bw_gb_s if session.device else None
        marked = session.device is None or session.device.device != ENDPOINT
        run_mt = run.metrics() if run else None
        run_roof = session.live_roofline(run) if run else None
        sess = session.session_metrics(run.key if run else None)
        return (run, metric_rows(run_mt, run_roof, mem_bw, marked),
                metric_rows(sess, sess.get("roofline") if sess else None, mem_bw, marked),
                run_roof, sess)

    def redraw_now(self) -> None:
        model = self.app.model
        session = model.session
        v = palette(self.app)
        run, a, b, run_roof, sess = self.figures()
        previous = model.applying is not None or bool(model.pending_changes())
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False,
                      header_style=f"bold {v['primary']}")
        # the label gives way first: values keep their full width
        table.add_column("", style="bold", no_wrap=True, overflow="ellipsis", min_width=6, ratio=1)
        head = "run"
        if run:
            head = f"run #{run.run_id}" + ("" if run.done else " live")
            if previous:
                head = f"prev. config #{run.run_id}"
        width = lambda col, title: max([len(title)] + [len(x) for x in col])  # noqa: E731
        table.add_column(head, justify="right", no_wrap=True, min_width=width(a, head))
        runs = sess["runs"] if sess else 0
        head2 = f"config · {runs} run{'s' if runs != 1 else ''}"
        table.add_column(head2, justify="right", no_wrap=True, min_width=width(b, head2))
        for label, x, y in zip(LABELS, a, b):
            if not self.compact or label in COMPACT_LABELS:
                table.add_row(label, x, y, style="dim" if previous else "")
        device = session.model.device if session.model else model.desired.device
        tp = session.model.tp if session.model else 1
        kind, line = bottleneck(device, run_roof, model.gpu_busy_pct(), model.collective_pct(), tp,
                                run.opts if run else model.desired.opts)
        colour = {"memory": "success", "launch": "warning", "compute": "success",
                  "collective": "warning",
                  "kernel": "warning", "overhead": "warning"}.get(kind, "foreground")
        text = Text("bottleneck: ", style="bold")
        text.append(line, style=v[colour])
        if previous:
            text.append("\n(figures of the previous configuration until the next run)", style="dim")
        g = session.guard_result
        if g is not None:
            text.append("\nguard: ", style="bold")
            line, colour = guard_line(g)
            text.append(line, style=v.get(colour, v["foreground"]))
        self.update(Group(table, text), layout=False)
