"""`llmtop bench --endpoint URL` as a real subprocess against the replay server: a point's batch
is that many concurrent streamed requests; the sweep's files and reports are an engine sweep's."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.bench.conftest import llmtop, point_lines

DATA = Path(__file__).parent / "data"
FAST = ["--max-new-tokens", "8", "--repeat", "2", "--warmup", "1", "--no-plots", "--timeout", "20"]


def test_sweep_of_1_2_4_concurrent_requests_and_resume(replay: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = llmtop("bench", "--endpoint", replay + "/oai", "--batch", "1,2,4", "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    plan_line = proc.stderr.splitlines()[0]
    assert plan_line.startswith("llmtop bench: plan: transformers at " + replay + "/oai")
    assert "concurrent requests 1,2,4; new tokens 8" in proc.stderr
    reply = json.loads((DATA / "transformers_serve_completions.json").read_text())
    points = point_lines(out / "points.jsonl")
    assert [p["batch"] for p in points] == [1, 2, 4]
    for p in points:
        assert p["status"] == "ok" and p["config"] == "endpoint" and len(p["runs"]) == 2
        assert p["prompt_len"] == reply["usage"]["prompt_tokens"]
        for run, serving in zip(p["runs"], p["serving"]):
            assert run["text"] == reply["choices"][0]["text"] and run["n_tokens"] == 8
            assert serving["completed"] == p["batch"] and serving["total_output_tokens"] == 8 * p["batch"]
            assert run["e2e_ms"] > run["ttft_ms"] > 0
        assert p["tokens_per_s"] == p["batch"] * 8 / (p["e2e_ms"] / 1e3)
    report = (out / "report.md").read_text()
    assert "transformers at " + replay + "/oai" in report
    assert [line.split("|")[2].strip() for line in report.splitlines()
            if line.startswith("| endpoint | ") and "backend=" not in line] == ["1", "2", "4"]
    assert (out / "bench.csv").exists() and (out / "bench.json").exists()

    # --resume with one more batch size: only batch 8 is sent, the first three are kept
    proc = llmtop("bench", "--out", str(out), "--resume", "--batch", "1,2,4,8", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "3 of 4 points already measured, 1 to go" in proc.stderr
    points = point_lines(out / "points.jsonl")
    assert [p["batch"] for p in points] == [1, 2, 4, 8]
    assert points[-1]["status"] == "ok" and points[-1]["serving"][0]["completed"] == 8


def test_a_stream_cut_mid_way_is_an_error_point(replay: str, tmp_path: Path) -> None:
    out = tmp_path / "cut"
    proc = llmtop("bench", "--endpoint", replay + "/cut", "--batch", "1,2", "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    points = point_lines(out / "points.jsonl")
    assert [(p["batch"], p["status"]) for p in points] == [(1, "error"), (2, "error")]
    assert "ended after 3 chunks" in points[0]["error"]
    assert "ERROR" in (out / "report.md").read_text()


def test_bad_input_is_one_line(replay: str, tmp_path: Path) -> None:
    cases = [
        (["--endpoint", replay + "/nothing"], "no OpenAI-compatible /v1/models nor TGI /info"),
        (["--endpoint", replay + "/oai", "--model", "embedded"], "--model configure llmtop's own engine"),
        (["--endpoint", "http://192.0.2.1:8000"], "--allow-remote"),
        (["--endpoint", replay + "/tgi", "--ignore-eos"], "no ignore_eos"),
    ]
    for n, (argv, expect) in enumerate(cases):
        proc = llmtop("bench", *argv, "--out", str(tmp_path / str(n)), "--timeout", "20")
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1


def test_ctrl_c_stops_the_sweep_and_keeps_what_was_measured(replay: str, tmp_path: Path) -> None:
    """SIGINT in the middle of a point (one event a second): exit 130, the points before it kept,
    the cut one not recorded (--resume measures it), and the way to continue said."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-m", "llmtop", "bench", "--endpoint", replay + "/slow",
                             "--batch", "1,2", "--out", str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(3):   # the plan, printed before anything is sent
        assert proc.stderr.readline().startswith(("llmtop bench: plan", "  "))
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"continue with: llmtop bench --out {out} --resume" in err and "Traceback" not in err
    assert point_lines(out / "points.jsonl") == []
