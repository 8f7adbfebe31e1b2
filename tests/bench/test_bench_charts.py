"""The study's charts: tensor-parallel sizes share one chart per metric, a line per size."""

from __future__ import annotations

from llmtop import bench_charts


def _point(tp: int, batch: int, ttft: float, tpot: float) -> dict:
    return {"config": "flash", "tp": tp, "prompt_len": 2048, "new_tokens": 64, "batch": batch,
            "status": "ok", "ttft_ms": ttft, "tpot_ms": tpot}


def test_tp_sizes_are_lines_of_one_chart():
    points = [_point(tp, b, 100.0 * b / tp, 20.0 / tp + b) for tp in (2, 4) for b in (1, 8)]
    charts = bench_charts.terminal_charts({"points": points})
    assert len(charts) == 2  # prefill and decode, not one pair per TP size
    prefill, decode = charts
    assert "Prefill latency (TTFT) vs batch, prompt 2048, 64 new tokens" in prefill
    assert "flash tp2" in prefill and "flash tp4" in prefill and "flash tp4" in decode
    assert bench_charts.chart_name("prefill", (2048, 64), False) == "prefill_vs_batch.png"


def test_one_tp_size_keeps_plain_names_and_says_the_size():
    points = [_point(4, b, 50.0 * b, 10.0 + b) for b in (1, 2)]
    prefill, _ = bench_charts.terminal_charts({"points": points})
    assert ", tp 4" in prefill and "flash tp4" not in prefill
