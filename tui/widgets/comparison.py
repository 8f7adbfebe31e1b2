"""Comparison: one row per configuration run this session; the study's summary, live."""

from __future__ import annotations

import math

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from ..analysis import num
from .base import Coalesced, palette

COLUMNS = ("", "configuration", "runs", "TTFT ms", "TPOT ms", "tok/s", "speedup", "guard")


class ComparisonTable(DataTable, Coalesced):
    BINDINGS = [Binding("enter", "baseline", "Make baseline", show=False)]
    DEFAULT_CSS = """
    ComparisonTable { height: auto; max-height: 14; border: round $primary 50%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.border_title = "comparison (speedup = baseline TPOT / TPOT)"

    def on_mount(self) -> None:
        for label in COLUMNS:
            self.add_column(label, key=label or "mark")
        self.redraw_now()

    def action_baseline(self) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            self.app.set_baseline(key)

    def redraw_now(self) -> None:
        app = self.app
        session = app.session
        v = palette(app)
        cursor = self.cursor_row
        self.clear()
        current = (app.session.current_or_last().key if app.session.current_or_last() else None)
        for row in session.rows.values():
            base = row.key == session.baseline
            sp = session.speedup(row)
            guard = session.guard(row)
            gstyle = (v["error"] if guard.startswith("diverged") else
                      v["success"] if guard.startswith("identical") else "")
            sp_text = Text("1.00×" if base else ("n/a" if math.isnan(sp) else f"{sp:.2f}×"),
                           style=(v["success"] if not math.isnan(sp) and sp > 1.02 else
                                  v["error"] if not math.isnan(sp) and sp < 0.98 else ""))
            mark = ("★" if base else "") + ("▶" if row.key == current else "")
            self.add_row(Text(mark, style=v["accent"]), row.label, str(len(row.runs)),
                         num(row.ttft_ms, 1), num(row.tpot_ms, 2), num(row.tokens_per_s, 1),
                         sp_text, Text(guard, style=gstyle), key=row.key)
        if not session.rows:
            self.border_subtitle = "a row appears when a run finishes"
        else:
            self.border_subtitle = "★ baseline (enter or b sets it) · ▶ current"
        if self.row_count:
            self.move_cursor(row=min(max(cursor, 0), self.row_count - 1), animate=False)
