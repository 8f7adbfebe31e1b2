"""`llmtop bench` end to end on real engine processes: the numbers in every report agree with
the per-token stamps, OOM points are recorded and the sweep goes on, bad arguments exit 2."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from .conftest import TINY, llmtop, stamps_ttft_tpot

BATCHES = [1, 2]
NEW = 6
PROMPT = 32


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    p = llmtop("bench", *TINY, "--batch", "1,2", "--prompt-len", str(PROMPT), "--max-new-tokens",
               str(NEW), "--repeat", "2", "--warmup", "1", "--opt", "attention=sdpa", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out, p


def _points(out: Path) -> list[dict]:
    return json.loads((out / "bench.json").read_text())["points"]


def test_sweep_writes_every_report(sweep):
    out, p = sweep
    for name in ("points.jsonl", "bench.json", "bench.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "llmtop.bench/1"
    assert data["model"]["name"] == "synthetic:tiny" and data["model"]["synthetic"] is True
    assert {"hostname", "platform", "gpus"} <= set(data["machine"])
    assert "torch" in data["versions"] and "transformers" in data["versions"]
    assert data["telemetry"]["available"] is False and data["telemetry"]["reason"]
    assert [c["name"] for c in data["configs"]] == ["baseline", "attention=sdpa"]
    assert data["configs"][0]["opts"]["attention"] == "eager"
    assert data["configs"][1]["opts"]["attention"] == "sdpa"
    pts = data["points"]
    assert [(q["config"], q["batch"], q["status"]) for q in pts] == [
        ("baseline", 1, "ok"), ("baseline", 2, "ok"), ("attention=sdpa", 1, "ok"), ("attention=sdpa", 2, "ok")]
    # the progress lines (stderr is not a terminal here) name each point as it finishes
    assert p.stderr.count("TTFT") == 4 and "[4/4]" in p.stderr


def test_json_figures_are_the_stamps(sweep):
    out, _ = sweep
    pts = _points(out)
    base = {q["batch"]: q for q in pts if q["config"] == "baseline"}
    for q in pts:
        assert len(q["runs"]) == 2
        ttfts, tpots = [], []
        for run in q["runs"]:
            assert len(run["t_ns"]) == NEW and len(run["ids"]) == q["batch"]
            assert all(len(ids) == NEW for ids in run["ids"])
            assert run["t_ns"] == sorted(run["t_ns"]) and run["t_ns"][0] > run["start_ns"]
            ttft, tpot = stamps_ttft_tpot(run)
            assert math.isclose(run["ttft_ms"], ttft, rel_tol=1e-9)
            assert math.isclose(run["tpot_ms"], tpot, rel_tol=1e-9)
            ttfts.append(ttft)
            tpots.append(tpot)
        assert math.isclose(q["ttft_ms"], sum(ttfts) / 2, rel_tol=1e-9)
        assert math.isclose(q["tpot_ms"], sum(tpots) / 2, rel_tol=1e-9)
        assert math.isclose(q["ttft_ms_min"], min(ttfts), rel_tol=1e-9)
        assert math.isclose(q["decode_tokens_per_s"], q["batch"] / (q["tpot_ms"] / 1e3), rel_tol=1e-9)
        assert math.isclose(q["prefill_tokens_per_s"], q["batch"] * PROMPT / (q["ttft_ms"] / 1e3), rel_tol=1e-9)
        b = base[q["batch"]]
        assert math.isclose(q["ttft_speedup"], b["ttft_ms"] / q["ttft_ms"], rel_tol=1e-9)
        assert math.isclose(q["tpot_speedup"], b["tpot_ms"] / q["tpot_ms"], rel_tol=1e-9)
        roof = q["roofline"]
        assert math.isclose(roof["decode_pct"], 100 * roof["decode_floor_ms"] / q["tpot_ms"], rel_tol=1e-9)
        if roof["prefill_pct"] is None:   # a beaten floor is never shown as > 100 %
            assert q["ttft_ms"] < roof["prefill_floor_ms"]
        else:
            assert math.isclose(roof["prefill_pct"], 100 * roof["prefill_floor_ms"] / q["ttft_ms"], rel_tol=1e-9)
    assert all(q["guard"] == "baseline" for q in pts if q["config"] == "baseline")
    assert all(q["guard"] == "identical" or q["guard"].startswith("diverged at")
               for q in pts if q["config"] != "baseline")


def test_csv_holds_the_same_numbers(sweep):
    out, _ = sweep
    pts = _points(out)
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(pts)
    for row, q in zip(rows, pts):
        assert (row["config"], int(row["batch"]), row["status"]) == (q["config"], q["batch"], "ok")
        for col in ("ttft_ms", "tpot_ms", "e2e_ms", "ttft_speedup", "tpot_speedup"):
            assert float(row[col]) == q[col], col
        assert float(row["decode_roofline_pct"]) == q["roofline"]["decode_pct"]
        assert row["attention"] == q["opts"]["attention"]
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        df = pd.read_csv(out / "bench.csv")
        assert df["ttft_ms"].dtype.kind == "f" and df["batch"].dtype.kind == "i"
        assert list(df["tpot_ms"]) == [q["tpot_ms"] for q in pts]


def _md_rows(md: str) -> list[list[str]]:
    section = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    return rows


def test_markdown_and_terminal_table_show_the_same_numbers(sweep):
    out, p = sweep
    pts = _points(out)
    md = (out / "report.md").read_text()
    rows = _md_rows(md)
    header = rows[0]
    assert header[:5] == ["config", "batch", "status", "TTFT ms", "TPOT ms"]
    body = rows[2:]
    assert len(body) == len(pts)
    for row, q in zip(body, pts):
        assert row[0] == q["config"] and int(row[1]) == q["batch"]
        assert row[3] == f"{q['ttft_ms']:.2f}" and row[4] == f"{q['tpot_ms']:.2f}"
        assert row[6] == f"{q['ttft_speedup']:.2f}x"
        assert row[9] == f"{q['roofline']['decode_pct']:.1f}"
        line = next(ln for ln in p.stdout.splitlines()
                    if ln.split()[:2] == [q["config"], str(q["batch"])])
        assert f"{q['ttft_ms']:.2f}" in line.split() and f"{q['tpot_ms']:.2f}" in line.split()
    for title in ("## Prefill latency (TTFT) vs batch", "## Decode latency (TPOT) vs batch"):
        assert title in md
    assert md.count("```text") == 2          # the two terminal charts, drawn into the report
    assert "Prefill latency (TTFT) vs batch" in p.stdout and "Decode latency (TPOT) vs batch" in p.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("prefill_vs_batch.png", "decode_vs_batch.png"):
            assert (out / png).read_bytes()[:4] == b"\x89PNG"
            assert f"]({png})" in md
    else:
        assert "PNG charts need matplotlib" in md


def test_report_only_rebuilds_the_same_results(sweep, tmp_path):
    out, _ = sweep
    before = _points(out)
    p = llmtop("bench", "--out", str(out), "--report-only", "--no-plots")
    assert p.returncode == 0, p.stderr
    after = _points(out)
    assert [q["ttft_ms"] for q in after] == [q["ttft_ms"] for q in before]
    assert "Prefill latency" not in p.stdout


def test_embedded_model_sweep_agrees_with_its_stamps(tmp_path):
    out = tmp_path / "embedded"
    p = llmtop("bench", "--model", "embedded", "--device", "cpu", "--no-telemetry", "--batch", "1",
               "--prompt-len", "12", "--max-new-tokens", "4", "--repeat", "1", "--warmup", "0",
               "--preset", "baseline", "--out", str(out), "--no-plots")
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "bench.json").read_text())
    assert data["model"]["name"].startswith("SmolLM2") and not data["model"]["synthetic"]
    assert [(q["config"], q["status"]) for q in data["points"]] == [("baseline", "ok")]
    for q in data["points"]:
        (run,) = q["runs"]
        ttft, tpot = stamps_ttft_tpot(run)
        assert math.isclose(q["ttft_ms"], ttft, rel_tol=1e-9)
        assert math.isclose(q["tpot_ms"], tpot, rel_tol=1e-9)
        assert run["text"]                                  # real tokens decode to text
    md = (out / "report.md").read_text()
    assert f"| baseline | 1 | ok | {data['points'][0]['ttft_ms']:.2f} | {data['points'][0]['tpot_ms']:.2f} |" in md


def test_oom_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a batch of ten billion cannot be allocated anywhere: the engine reports it, bench records
    # OOM, skips the bigger batch of that series and carries on with the next configuration
    out = tmp_path / "oom"
    p = llmtop("bench", *TINY, "--batch", "1,10000000000,20000000000", "--prompt-len", "8",
               "--max-new-tokens", "3", "--repeat", "1", "--warmup", "0", "--opt", "attention=sdpa",
               "--out", str(out), "--no-plots")
    assert p.returncode == 0, p.stderr
    pts = json.loads((out / "bench.json").read_text())["points"]
    got = [(q["config"], q["batch"], q["status"]) for q in pts]
    assert got == [("baseline", 1, "ok"), ("baseline", 10000000000, "oom"),
                   ("baseline", 20000000000, "skipped"), ("attention=sdpa", 1, "ok"),
                   ("attention=sdpa", 10000000000, "oom"), ("attention=sdpa", 20000000000, "skipped")]
    assert "memory" in pts[1]["error"]
    assert "OOM" in p.stdout and "Traceback" not in p.stderr
    md = (out / "report.md").read_text()
    assert "| baseline | 10000000000 | OOM |" in md


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], "--batch takes numbers of at least 1"),
    (["--batch", "1,x"], "--batch takes comma-separated whole numbers"),
    (["--opt", "attention=fast"], "unknown attention option 'fast'"),
    (["--opt", "compile=full"], "requires kv=static"),
    (["--config", "nocolon"], "--config takes NAME:AXIS=VALUE"),
    (["--preset", "nosuch"], "unknown preset 'nosuch'"),
    (["--model", "/no/such/model"], "no such model directory or file"),
    (["--resume"], "--resume and --report-only need --out DIR"),
    (["--repeat", "0"], "--repeat must be at least 1"),
])
def test_bad_arguments_exit_2_with_one_line(args, words, tmp_path, capsys):
    from llmtop.cli import main

    code = main(["bench", "--out", str(tmp_path / "x"), *args] if "--resume" not in args
                else ["bench", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "x").exists()      # nothing started, nothing written


def test_existing_sweep_needs_resume_and_damaged_file_is_named(tmp_path, capsys):
    from llmtop.cli import main

    out = tmp_path / "s"
    out.mkdir()
    (out / "points.jsonl").write_text('{"type": "plan", "plan": {}}\n')
    assert main(["bench", "--out", str(out), *TINY]) == 2
    assert "already holds a sweep: add --resume" in capsys.readouterr().err
    (out / "points.jsonl").write_text('{"type": "plan", "plan": {}}\ngarbage\n{"type": "plan", "plan": {}}\n')
    assert main(["bench", "--out", str(out), "--resume", *TINY]) == 2
    err = capsys.readouterr().err
    assert "points.jsonl: line 2 is not a bench record" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "--out", str(out), "--report-only"]) == 2


def test_power_summary_from_sampler_samples():
    from llmtop.bench_telemetry import power_summary
    from llmtop.profilers.gpu import GpuSample as S

    class FakeSampler:
        def samples_between(self, t0, t1, index=None):
            return [S(index=0, power_w=100.0, t_ns=0), S(index=0, power_w=200.0, t_ns=1),
                    S(index=1, power_w=50.0, t_ns=1), S(index=0, power_w=None, t_ns=2)]

    s = power_summary(FakeSampler(), 0, 2_000_000_000, [0], tokens=10)
    assert s["available"] and s["mean_power_w"] == 150.0
    assert s["energy_j"] == 300.0 and s["energy_j_per_token"] == 30.0
    both = power_summary(FakeSampler(), 0, 1_000_000_000, None, tokens=4)
    assert both["mean_power_w"] == 200.0 and both["energy_j_per_token"] == 50.0
    assert power_summary(FakeSampler(), 0, 1, [5], tokens=1)["available"] is False
    assert both["per_gpu"]["0"] == {"power_w": 150.0, "util_pct": None, "mem_used_gib": None}


def test_compile_events_during_measured_runs_are_flagged(sweep, tmp_path):
    from llmtop import bench_report, bench_store

    out, _ = sweep
    records, _ = bench_store.read_lines(out / "points.jsonl")
    assert all(not r.get("engine_events") for rec in records if rec["type"] == "point" for r in rec["runs"])
    point = next(r for r in records if r["type"] == "point" and r["config"] == "attention=sdpa")
    point["runs"][1]["engine_events"] = [{"kind": "recompile", "detail": "seq len", "t_ns": 1}] * 2
    results = bench_report.build_results(records)
    note = (f"attention=sdpa batch {point['batch']} (prompt {PROMPT}): 2 recompile during the measured "
            "runs: their timings include that work")
    assert note in results["notes"]
    bench_report.write_all(results, tmp_path)
    assert f"- {note}" in (tmp_path / "report.md").read_text()
    assert f"note: {note}" in bench_report.table(results)
