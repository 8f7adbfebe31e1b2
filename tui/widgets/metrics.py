"""Metrics: TTFT, TPOT mean/p50/p90/p99, tok/s, end-to-end, % of the roofline floors, bottleneck.

Two columns: the current run (live, from the stamps so far, same formulas as the engine) and
the session's runs of the same configuration.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..analysis import bottleneck, num
from .base import Coalesced, palette


def metric_rows(mt: dict[str, Any] | None, roof: dict[str, Any] | None,
                mem_bw: float | None) -> list[str]:
    if not mt:
        return ["n/a"] * len(LABELS)
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
    return [
        num(mt.get("ttft_ms"), 1, "ms"),
        num(mt.get("tpot_ms") if mt.get("n_tokens", 2) > 1 else None, 2, "ms"),
        f"{num(itl.get('p50'), 1)} / {num(itl.get('p90'), 1)} / {num(itl.get('p99'), 1)}",
        num(mt.get("decode_tokens_per_s"), 1),
        num(mt.get("tokens_per_s"), 1),
        num(mt.get("e2e_ms"), 0, "ms"),
        tokens,
        decode,
        bandwidth,
        prefill,
    ]


LABELS = ["TTFT", "TPOT mean", "ITL p50/p90/p99", "decode tok/s", "overall tok/s", "end-to-end",
          "tokens", "decode floor", "bandwidth", "prefill floor"]
# what a short terminal keeps: the latency figures and how far they are from the floor
COMPACT_LABELS = ("TTFT", "TPOT mean", "ITL p50/p90/p99", "decode tok/s", "decode floor")
CHROME = 4             # border (2), the table's header and its rule
NOTE_ROWS = 5          # the bottleneck and guard lines, wrapped
COMPACT_NOTE_ROWS = 3  # at 80 columns: bottleneck in two lines, guard in one


class MetricsPanel(Static, Coalesced):
    interval = 0.5
    skip_hidden = True   # two instances (side by side, stacked): only the shown one draws
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

    def redraw_now(self) -> None:
        app = self.app
        session = app.session
        v = palette(app)
        run = session.current_or_last()
        mem_bw = session.device.mem_bw_gb_s if session.device else None
        run_mt = run.metrics() if run else None
        run_roof = session.live_roofline(run) if run else None
        sess = session.session_metrics(run.key if run else None)
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False,
                      header_style=f"bold {v['primary']}")
        table.add_column("", style="bold", no_wrap=True, min_width=15)
        head = f"this run #{run.run_id}" + ("" if run.done else " (live)") if run else "this run"
        table.add_column(head, justify="right", no_wrap=True)
        runs = sess["runs"] if sess else 0
        table.add_column(f"this config: {runs} run{'s' if runs != 1 else ''}", justify="right",
                         no_wrap=True)
        a = metric_rows(run_mt, run_roof, mem_bw)
        b = metric_rows(sess, sess.get("roofline") if sess else None, mem_bw)
        for label, x, y in zip(LABELS, a, b):
            if not self.compact or label in COMPACT_LABELS:
                table.add_row(label, x, y)
        gpu_busy = app.gpu_busy_pct()
        device = session.model.device if session.model else app.desired.device
        tp = session.model.tp if session.model else 1
        kind, line = bottleneck(device, run_roof, gpu_busy, app.collective_pct(), tp)
        colour = {"memory": "success", "launch": "warning", "compute": "success",
                  "collective": "warning",
                  "kernel": "warning", "overhead": "warning"}.get(kind, "foreground")
        text = Text("bottleneck: ", style="bold")
        text.append(line, style=v[colour])
        g = session.guard_result
        if g is not None:
            text.append("\nguard: ", style="bold")
            diff = "" if g.max_logit_diff is None else f", max |Δlogit| {g.max_logit_diff:.3g}"
            if g.status == "identical":
                text.append(f"identical to {g.baseline} over {g.tokens} tokens{diff}", style=v["success"])
            else:
                text.append(f"diverged from {g.baseline} at token {g.diverged_at}{diff}", style=v["warning"])
        self.update(Group(table, text), layout=False)
