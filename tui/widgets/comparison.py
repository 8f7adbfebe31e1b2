"""Comparison: one row per configuration run this session; the study's summary, live.

Speedup compares like with like against the ★ row: TPOT when the batch sizes match, decode
tok/s (and says so) when they do not. The guard column has three states: identical, equivalent
within the dtype's rounding (not an alarm), diverged (red).
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from ..analysis import num
from .base import Coalesced, palette

COLUMNS = ("", "configuration", "runs", "TTFT ms", "TPOT ms", "tok/s", "speedup", "guard")


def speedup_text(ratio: float, basis: str, baseline: bool) -> str:
    if baseline:
        return "1.00× ★"
    if math.isnan(ratio):
        return "n/a"
    return f"{ratio:.2f}×" + (" tok/s" if basis == "tok/s" else "")


class ComparisonTable(DataTable, Coalesced):
    BINDINGS = [Binding("enter", "baseline", "Make baseline", show=False)]
    DEFAULT_CSS = """
    ComparisonTable { height: auto; max-height: 14; border: round $primary 50%; }
    """
    watches = ("runs", "guard", "config", "status")

    class BaselineChosen(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.border_title = "comparison · speedup vs ★ (TPOT; tok/s across batch sizes)"

    def on_mount(self) -> None:
        for label in COLUMNS:
            self.add_column(label, key=label or "mark")
        self.redraw_now()

    def action_baseline(self) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            self.post_message(self.BaselineChosen(key))

    def on_resize(self) -> None:
        self.redraw_now()

    def label_width(self, cells: list[tuple[str, ...]]) -> int:
        """The widest configuration label that leaves every other column whole in the panel: a
        long label is shortened, never a figure or the guard's verdict (issue 14.7; at 160x48 a
        three-axis label pushed "equivalent" past the border)."""
        if not self.size.width:
            return 1000                               # not laid out yet: on_resize redraws
        pad = 2 * self.cell_padding
        others = sum(max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) + pad
                     for i in range(len(COLUMNS)) if i != 1)
        return max(len(COLUMNS[1]), self.size.width - others - pad - 2)   # 2: a scrollbar

    def redraw_now(self) -> None:
        session = self.app.model.session
        v = palette(self.app)
        cursor = self.cursor_row
        self.clear()
        last = session.current_or_last()
        current = last.key if last else None
        rows = []
        for row in session.rows.values():
            base = row.key == session.baseline
            ratio, basis = session.speedup(row)
            state, guard = session.guard(row)
            mark = ("★" if base else "") + ("▶" if row.key == current else "")
            cells = (mark, row.label, str(row.count), num(row.ttft_ms, 1), num(row.tpot_ms, 2),
                     num(row.tokens_per_s, 1), speedup_text(ratio, basis, base), guard)
            rows.append((row.key, base, ratio, state, cells))
        width = self.label_width([r[4] for r in rows]) if rows else 0
        for key, base, ratio, state, cells in rows:
            mark, label, *figures, sp, guard = cells
            gstyle = {"diverged": v["error"], "identical": v["success"],
                      "equivalent": v.get("secondary", v["foreground"])}.get(state, "")
            sp_style = (v["success"] if not base and not math.isnan(ratio) and ratio > 1.02 else
                        v["warning"] if not base and not math.isnan(ratio) and ratio < 0.98 else "")
            if len(label) > width:
                label = label[:width - 1] + "…"
            self.add_row(Text(mark, style=v["accent"]), label, *figures, Text(sp, style=sp_style),
                         Text(guard, style=gstyle), key=key)
        if not session.rows:
            self.border_subtitle = "a row appears when a run finishes"
        else:
            self.border_subtitle = "★ speedup baseline (b, or enter on a row) · ▶ current"
        if self.row_count:
            self.move_cursor(row=min(max(cursor, 0), self.row_count - 1), animate=False)
