"""What a newcomer meets on the command line (issue 18): bad input gets one line and exit code 2
before the engine starts, and a measured run is never lost to an output error. Each test runs
the real `llmtop` in a subprocess; none loads a model, except the --json one (synthetic:tiny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from llmtop import checks
from llmtop.engine import spec

from .conftest import LLMTOP, llmtop

TINY_RUN = ["run", "--headless", "--model", "synthetic:tiny", "--device", "cpu",
            "--prompt-len", "8", "--max-new-tokens", "2"]
NO_GPU = checks.gpu_count(checks.torch_build()[0]) == 0


def _one_line(p: subprocess.CompletedProcess, words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert words in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "Error:" not in p.stderr     # no exception class names


def test_json_into_a_missing_folder_is_refused_before_measuring(tmp_path):
    p = llmtop(*TINY_RUN, "--json", str(tmp_path / "no" / "such" / "x.json"))
    _one_line(p, f"the folder {tmp_path / 'no' / 'such'} does not exist")
    assert p.stdout == ""               # nothing was measured


@pytest.mark.skipif(not os.access("/dev/full", os.W_OK), reason="needs a writable /dev/full")
def test_a_write_that_fails_after_the_run_keeps_the_record_in_the_cache(tmp_path):
    """/dev/full passes the check (a writable file) and fails the write (no space left)."""
    env = {**os.environ, "LLMTOP_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([*LLMTOP, *TINY_RUN, "--json", "/dev/full"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "cannot write /dev/full" in ln)
    kept = line.rsplit("the record is kept in ", 1)[1]
    record = json.loads(open(kept).read())
    assert record["schema"].startswith("llmtop.run/") and record["metrics"]["n_tokens"] == 2
    assert kept.startswith(str(tmp_path / "cache" / "sessions"))


@pytest.mark.parametrize("device, words", [
    pytest.param("cuda", "--device cuda: this machine has: cpu", marks=pytest.mark.skipif(not NO_GPU, reason="has a GPU")),
    pytest.param("cuda:3", "--device cuda:3: this machine has: cpu", marks=pytest.mark.skipif(not NO_GPU, reason="has a GPU")),
    ("tpu", "unknown device 'tpu': --device takes auto, cpu, cuda or cuda:N; this machine has: cpu"),
])
def test_a_device_this_machine_lacks_is_one_line_before_the_engine(device, words, tmp_path):
    for command in (["run", "--headless"], ["bench", "--out", str(tmp_path / "b")], []):
        p = llmtop(*command, "--device", device)    # [] is the dashboard: refused before the app
        _one_line(p, words)
    assert not (tmp_path / "b").exists()


def test_more_cpu_ranks_than_a_cpu_offers():
    _one_line(llmtop(*TINY_RUN, "--tp", "3"), "--tp 3 on the CPU: a CPU offers --tp 1 or 2")


@pytest.mark.parametrize("flag, value, words", [("--temperature", "-1", "--temperature must be in (0, 2]"),
                                                ("--temperature", "2.5", "--temperature must be in (0, 2]"),
                                                ("--top-p", "1.5", "--top-p must be in (0, 1]"),
                                                ("--top-k", "-2", "--top-k must be 0 (off) or more")])
def test_sampling_settings_out_of_range(flag, value, words):
    _one_line(llmtop(*TINY_RUN, "--sample", flag, value), words)


def test_a_gguf_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    for command in (["run", "--headless"], ["bench", "--out", str(tmp_path / "b")]):
        _one_line(llmtop(*command, "--model", str(fake), "--device", "cpu"),
                  f"{fake} is not a GGUF file (it does not start with the GGUF magic bytes)")


def test_a_prompt_longer_than_the_context_is_refused_before_loading(tmp_path):
    p = llmtop("run", "--headless", "--model", "synthetic:tiny", "--device", "cpu",
               "--prompt-len", "4090", "--max-new-tokens", "64")
    _one_line(p, "prompt of 4090 tokens + 64 new tokens exceeds the model's context of 4096")
    p = llmtop("bench", "--model", "synthetic:tiny", "--device", "cpu", "--prompt-len", "128,5000", "--max-new-tokens", "16",
               "--out", str(tmp_path / "b"))
    _one_line(p, "prompt of 5000 tokens + 16 new tokens exceeds the model's context of 4096")


@pytest.mark.skipif(not (spec.embedded_cache() / "tokenizer.json").exists(),
                    reason="the embedded model is not converted yet (no tokenizer.json)")
def test_a_text_prompt_longer_than_the_context_is_counted_by_the_tokenizer():
    p = llmtop("run", "--headless", "--prompt", "word " * 9000, "--max-new-tokens", "8")
    assert p.returncode == 2 and "exceeds the model's context of 8192" in p.stderr, p.stderr


def test_resume_on_nothing_is_an_error(tmp_path):
    _one_line(llmtop("bench", "--out", str(tmp_path / "none"), "--resume"),
              f"nothing to resume: {tmp_path / 'none'} does not exist")
    (tmp_path / "empty").mkdir()
    _one_line(llmtop("bench", "--out", str(tmp_path / "empty"), "--resume"),
              f"nothing to resume: {tmp_path / 'empty'} holds no sweep (points.jsonl is missing or empty)")


def test_bench_out_that_cannot_be_written_is_refused_before_measuring(tmp_path):
    (tmp_path / "file").write_text("")
    _one_line(llmtop("bench", "--out", str(tmp_path / "file" / "sweep"), "--model", "synthetic:tiny",
                     "--device", "cpu"), f"{tmp_path / 'file' / 'sweep'}")


@pytest.mark.skipif(not NO_GPU, reason="the CPU default is for machines without a GPU")
def test_plain_bench_prints_its_plan_first_and_picks_the_cpu_default(tmp_path):
    """The plan comes before the engine starts; Ctrl-C there ends it cleanly (exit 130)."""
    proc = subprocess.Popen([*LLMTOP, "bench", "--out", str(tmp_path / "b"), "--model", "synthetic:tiny",
                             "--no-telemetry", "--no-plots"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("starting the engine" in ln for ln in lines):
        line = proc.stderr.readline()
        assert line, (lines, proc.wait())
        lines.append(line.rstrip())
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert lines[0] == "llmtop bench: plan: synthetic:tiny (bf16) on cpu", lines
    assert lines[1] == "  configurations: baseline, sdpa, flash, paged (those this device runs)"
    assert lines[2] == "  batch 1,2,4; prompt 128; new tokens 32; tp 1"
    assert lines[3].startswith("  up to 12 points, each 1 warm-up + 3 measured runs"), lines
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest


def _session(path) -> None:
    from llmtop.engine.session_log import SessionWriter

    with SessionWriter(path) as w:
        w.note("hello")


def test_files_are_named_for_what_they_are(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"schema": "llmtop.run/1", "model": {}, "config": {}, "metrics": {}}, indent=1))
    session = tmp_path / "session.jsonl"
    _session(session)
    _one_line(llmtop("replay", str(run), "--headless"),
              f"{run} is a run record (llmtop run --json), not a session; replay takes a session file")
    _one_line(llmtop("replay", str(tmp_path / "gone.jsonl"), "--headless"),
              f"no such file: {tmp_path / 'gone.jsonl'}; replay takes a session file")
    _one_line(llmtop("compare", str(run), str(session)),
              f"{session} is a dashboard session (the JSONL the dashboard records): compare takes two "
              f"run records")
    assert llmtop("replay", str(session), "--headless", "--speed", "0").returncode == 0


def test_info_on_a_device_this_machine_lacks():
    _one_line(llmtop("info", "--device", "tpu"), "unknown device 'tpu'")
    if NO_GPU:
        _one_line(llmtop("info", "--device", "cuda"), "--device cuda: this machine has: cpu")


@pytest.mark.parametrize("value, seen", [("", 0), ("0,1", 2), ("1,-1,2", 1), ("GPU-0a1b", 1)])
def test_visible_devices_restrict_the_gpus_counted(monkeypatch, value, seen):
    """As the CUDA runtime reads CUDA_VISIBLE_DEVICES: entries up to the first invalid one."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert checks._visible(8) == seen
    assert checks._visible(1) == min(1, seen)
