"""The figures newer engines add to a run record (steady TPOT, marked stalls, the guard's
identical / equivalent / diverged) reach bench's points, table, Markdown, CSV and per-point
line when the record carries them, and an older record (without them) reports as before."""

from __future__ import annotations

import csv
import re

from llmtop import bench_points, bench_report


def _record(ttft: float, tpot: float, new: dict | None = None, guard: dict | None = None) -> dict:
    """A run record of 4 tokens (the schema's keys bench reads), stamps 1 ms apart after TTFT."""
    start = 1_000_000
    stamps = [start + int(ttft * 1e6) + int(i * tpot * 1e6) for i in range(4)]
    metrics = {"n_tokens": 4, "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": ttft + 3 * tpot,
               "itl": {"p50": tpot, "p99": tpot}, **(new or {})}
    return {"start_ns": start, "tokens": [[{"t_ns": t, "id": 7 + i, "text": "x"} for i, t in enumerate(stamps)]],
            "metrics": metrics, "model": {}, "guard": guard or {}}


def _point(config: str, records: list[dict]) -> dict:
    runs = [bench_points.compact_run(r, {}, []) for r in records]
    return {"type": "point", "key": f"{config}|tp1|p16|n4|b1", "config": config, "tp": 1,
            "prompt_len": 16, "new_tokens": 4, "batch": 1, "status": "ok", "runs": runs,
            "opts": {}, **bench_points.summarize(runs, 1, 16, None)}


def test_new_figures_are_columns_and_in_the_point_line(tmp_path):
    new = {"tpot_steady_ms": 1.5, "stalls": 1, "stall_ms": 40.0}
    eq = {"status": "equivalent", "diverged_at": 3, "margin": 0.01, "tolerance": 0.03}
    records = [_point("baseline", [_record(10, 2, new, {"status": "identical"})] * 2),
               _point("sdpa", [_record(8, 1.8, new, eq), _record(8, 2.2, new, eq)])]
    sdpa = records[1]
    assert sdpa["tpot_steady_ms"] == 1.5 and sdpa["stalls"] == 2 and sdpa["stall_ms"] == 80.0
    assert sdpa["guard_check"] == "equivalent at 3"
    line = bench_points.point_line(sdpa)
    assert "steady TPOT 1.50 ms" in line and "2 stalls (80 ms)" in line and "guard equivalent at 3" in line
    results = bench_report.build_results(records)
    text = bench_report.table(results)
    head = next(ln for ln in text.splitlines() if ln.startswith("config"))
    assert re.search(r"J/token\s+steady TPOT ms\s+stalls\s+guard$", head), head
    row = next(ln for ln in text.splitlines() if ln.startswith("sdpa"))
    assert re.search(r"\s1\.50\s+2 \(80 ms\)\s+equivalent at 3$", row), row
    paths = bench_report.write_all(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| steady TPOT ms | stalls | guard |" in md and "| 1.50 | 2 (80 ms) | equivalent at 3 |" in md
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert rows[1]["tpot_steady_ms"] == "1.5" and rows[1]["stalls"] == "2" and rows[1]["guard_check"] == "equivalent at 3"
    assert len(paths) >= 3


def test_an_old_record_reports_without_the_new_columns(tmp_path):
    records = [_point("baseline", [_record(10, 2)]), _point("sdpa", [_record(8, 1.8)])]
    assert "tpot_steady_ms" not in records[1] and "guard_check" not in records[1]
    assert bench_points.point_line(records[1]) == "TTFT 8.00 ms  TPOT 1.80 ms"
    results = bench_report.build_results(records)
    text = bench_report.table(results)
    assert "steady" not in text and "stalls" not in text
    head = next(ln for ln in text.splitlines() if ln.startswith("config"))
    assert head.split()[-1] == "J/token"
    bench_report.write_all(results, tmp_path)
    assert "steady TPOT" not in (tmp_path / "report.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert rows[1]["tpot_steady_ms"] == "" and rows[1]["guard_check"] == ""
