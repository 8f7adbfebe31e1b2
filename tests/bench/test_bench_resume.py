"""An interrupted sweep (the bench process killed outright) resumed loses nothing and measures
no point twice; a line cut by the kill is tolerated."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil

from .conftest import LLMTOP, TINY, llmtop, point_lines

ARGS = [*TINY, "--batch", "1,2,3", "--prompt-len", "32", "--max-new-tokens", "12",
        "--repeat", "2", "--warmup", "1", "--opt", "attention=sdpa", "--no-plots"]
KEYS = {f"{c}|tp1|p32|n12|b{b}" for c in ("baseline", "attention=sdpa") for b in (1, 2, 3)}


def test_killed_sweep_resumes_without_loss_or_repeat(tmp_path):
    out = tmp_path / "sweep"
    jsonl = out / "points.jsonl"
    proc = subprocess.Popen([*LLMTOP, "bench", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    children: list[psutil.Process] = []
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                children = psutil.Process(proc.pid).children(recursive=True) or children
            except psutil.NoSuchProcess:
                pass
            if jsonl.exists() and len(point_lines(jsonl)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the engine notices its owner is gone and exits: no orphan keeps the CPU busy
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"engine processes outlived the killed bench: {alive}"

    before = jsonl.read_bytes()
    kept = point_lines(jsonl)
    assert 2 <= len(kept) < len(KEYS)
    kept_keys = [q["key"] for q in kept]
    # the kill may also cut a line mid-write: simulate the worst case
    with open(jsonl, "ab") as f:
        f.write(b'{"type":"point","key":"attention=sdpa|tp1|p32|n12|b3","status":"o')

    p = llmtop("bench", "--out", str(out), "--resume", timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resuming: {len(kept)} of {len(KEYS)} points already measured" in p.stderr
    assert "was cut short (an interrupted write); ignored" in p.stderr
    after = jsonl.read_bytes()
    assert after.startswith(before)                       # nothing measured before is lost
    points = point_lines(jsonl)
    keys = [q["key"] for q in points]
    assert sorted(keys) == sorted(KEYS)                   # every point, each exactly once
    assert keys[:len(kept_keys)] == kept_keys
    assert all(q["status"] == "ok" for q in points)
    first_new = min(q["runs"][0]["start_ns"] for q in points[len(kept):])
    assert all(q["runs"][-1]["start_ns"] < first_new for q in kept)
    data = json.loads((out / "bench.json").read_text())
    assert sorted(q["key"] for q in data["points"]) == sorted(KEYS)

    # resuming a finished sweep measures nothing
    p = llmtop("bench", "--out", str(out), "--resume", "--no-plots", timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"all {len(KEYS)} points of this sweep are measured, 0 to go" in p.stderr
    assert [q["key"] for q in point_lines(jsonl)] == keys


def test_resume_refuses_another_model(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    plan = {"model": "synthetic:tiny", "device": "cpu", "dtype": "bf16", "configs": [], "default_configs": True}
    (out / "points.jsonl").write_text(json.dumps({"type": "plan", "plan": plan}) + "\n")
    p = llmtop("bench", "--out", str(out), "--resume", "--model", "embedded")
    assert p.returncode == 2
    assert p.stderr.strip() == (f"llmtop: the sweep in {out} ran with --model synthetic:tiny; resume it "
                                f"with the same --model (or use another --out)")


def test_ctrl_c_writes_the_reports_of_what_was_measured(tmp_path):
    # `timeout -s INT` signals the process, then its whole group: the second SIGINT must not
    # cut the clean-up short
    out = tmp_path / "int"
    jsonl = out / "points.jsonl"
    proc = subprocess.Popen([*LLMTOP, "bench", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and len(point_lines(jsonl)) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"continue with: llmtop bench --out {out} --resume" in stderr
    assert "Traceback" not in stderr
    measured = point_lines(jsonl)
    data = json.loads((out / "bench.json").read_text())
    assert [q["key"] for q in data["points"]] == [q["key"] for q in measured]
    assert (out / "report.md").exists() and "baseline" in stdout
