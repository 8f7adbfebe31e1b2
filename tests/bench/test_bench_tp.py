"""`llmtop bench --tp 1,2` on two gloo ranks of this CPU: both sizes measured, the TP=2 point
carries the share of its decode steps spent in all-reduce, and the report says so."""

from __future__ import annotations

import json

from .conftest import TINY, llmtop


def test_bench_over_tp_sizes_reports_the_collective_share(tmp_path):
    out = tmp_path / "tp"
    proc = llmtop("bench", *TINY, "--tp", "1,2", "--batch", "1", "--prompt-len", "16",
                  "--max-new-tokens", "8", "--repeat", "1", "--warmup", "1", "--warmup-tokens", "8",
                  "--preset", "baseline", "--out", str(out), "--no-plots", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = {p["tp"]: p for p in json.loads((out / "bench.json").read_text())["points"]}
    assert points[1]["status"] == points[2]["status"] == "ok"
    assert "profiled_step" not in points[1]  # one rank: nothing to share, nothing profiled
    share = points[2]["profiled_step"]
    assert 0 < share["collective_ms"] < share["step_ms"] and 0 < share["collective_pct"] < 100
    report = (out / "report.md").read_text()
    assert "## Tensor parallelism" in report and "Collectives per decode step" in report
    assert "baseline tp1" in report and "baseline tp2" in report  # one chart, a line per size
