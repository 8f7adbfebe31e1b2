"""`llmtop bench --tp 1,2` on two gloo ranks of this CPU: both sizes measured, the TP=2 point
carries the share of its decode steps spent in all-reduce, and the report says so."""

from __future__ import annotations

import json

import pytest

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
    assert "| busy in ATen ops ms |" in report and "GPU busy" not in report   # a CPU's ranks
    assert "baseline tp1" in report and "baseline tp2" in report  # one chart, a line per size
    # two ranks split the weights: their floor is half of one rank's (70B at TP=4 read 150 %)
    floors = {tp: p["roofline"]["decode_floor_ms"] for tp, p in points.items()}
    assert floors[2] == pytest.approx(floors[1] / 2, rel=0.05)

    # a report rebuilt from an older points file gets today's figures from the runs
    lines = (out / "points.jsonl").read_text().splitlines()
    stale = [json.loads(line) for line in lines]
    for rec in stale:
        if rec.get("type") == "point":
            rec["roofline"]["decode_floor_ms"] = 999.0
    (out / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    proc = llmtop("bench", "--out", str(out), "--report-only", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    rebuilt = {p["tp"]: p for p in json.loads((out / "bench.json").read_text())["points"]}
    assert {tp: p["roofline"]["decode_floor_ms"] for tp, p in rebuilt.items()} == pytest.approx(floors)
