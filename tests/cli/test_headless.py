"""The real `llmtop` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil

LLMTOP = [sys.executable, "-m", "llmtop"]


def llmtop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMTOP, *args], capture_output=True, text=True, timeout=timeout)


def test_headless_run_streams_text_and_ends_with_a_metrics_table(tmp_path):
    out = tmp_path / "run.json"
    p = llmtop("run", "--headless", "--raw", "--prompt", "The largest continent is",
               "--max-new-tokens", "24", "--json", str(out))   # --raw: a continuation
    assert p.returncode == 0, p.stderr
    text = p.stdout.split("\n---")[0]
    assert text.startswith("The largest continent is ")
    assert len(text.split()) > 10            # real words from the model
    for label in ("TTFT", "TPOT", "ITL", "latency", "= TTFT + TPOT x", "roofline"):
        assert label in p.stdout
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert math.isclose(m["e2e_ms"], m["ttft_ms"] + m["tpot_ms"] * (m["n_tokens"] - 1))
    assert f"{m['tpot_ms']:.2f} ms" in p.stdout
    assert {"model", "config", "machine", "versions", "tokens", "metrics", "guard"} <= set(record)
    assert all({"index", "id", "text", "t_ns"} <= set(t) for t in record["tokens"][0])


def test_wrong_model_path_exits_2_with_one_line():
    p = llmtop("run", "--headless", "--model", "/no/such/model")
    assert p.returncode == 2
    assert p.stderr.strip() == "llmtop: no such model directory or file: /no/such/model"
    assert "Traceback" not in p.stderr


def test_bad_option_and_conflict_exit_2_before_loading():
    p = llmtop("run", "--headless", "--opt", "attention=fast")
    assert p.returncode == 2 and "unknown attention option 'fast'" in p.stderr
    p = llmtop("run", "--headless", "--opt", "compile=full")
    assert p.returncode == 2 and "requires kv=static" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_unavailable_option_exits_2_with_reason():
    p = llmtop("run", "--headless", "--device", "cpu", "--opt", "gemm=tunableop")
    assert p.returncode == 2
    assert "gemm=tunableop is unavailable here: TunableOp needs a CUDA or ROCm GPU" in p.stderr
    assert "Traceback" not in p.stderr


def test_ctrl_c_stops_cleanly_and_leaves_no_process():
    proc = subprocess.Popen([*LLMTOP, "run", "--headless", "--max-new-tokens", "400",
                             "--ignore-eos"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    me = psutil.Process(proc.pid)
    first = proc.stdout.read(len("The largest continent is ") + 5)  # text has begun
    assert first.startswith("The largest continent is")
    children = me.children(recursive=True)
    assert children, "the engine runs in its own process"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1              # a run cut short still prints its figures
    assert "TPOT" in out and "stopped   early: stop" in out
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_info_lists_every_option_with_availability():
    p = llmtop("info", "--json", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    from llmtop.engine import catalogue

    for axis, options in catalogue.AXES.items():
        assert set(data["options"][axis]) == set(options)
    assert data["options"]["attention"]["cudnn"]["ok"] is False
    assert data["options"]["attention"]["cudnn"]["reason"]
    p = llmtop("info", "--device", "cpu")
    assert "tunableop" in p.stdout and "GPU backend" in p.stdout


def test_help_texts_explain_the_options():
    p = llmtop("run", "--help")
    for flag in ("--model", "--device", "--opt", "--preset", "--prompt-len", "--batch",
                 "--max-new-tokens", "--headless", "--json", "synthetic:llama-2-7b"):
        assert flag in p.stdout


def test_top_says_why_without_a_gpu_and_streams_the_host():
    """Like nvidia-smi dmon, top on a machine without a GPU still streams (issue 17.8)."""
    p = llmtop("top", "--count", "1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("# no GPU: NVML") and "host rows only" in p.stdout.splitlines()[0]
    assert p.stdout.splitlines()[2].split()[1] == "host"


def test_unknown_theme_exits_2_with_the_choices():
    p = llmtop("--theme", "neon")
    assert p.returncode == 2
    assert p.stderr.startswith("llmtop: unknown theme 'neon'; choose one of:")
    assert "llmtop-rocm" in p.stderr and "Traceback" not in p.stderr


def test_a_bad_gpu_set_exits_2_with_one_line_before_loading():
    """--gpus is checked before any engine starts: one GPU per rank, none twice, numbers only."""
    cases = [
        (["run", "--headless", "--tp", "2", "--gpus", "0,1,2"],
         "--gpus 0,1,2 names 3 GPUs for --tp 2: name exactly one GPU per rank"),
        (["run", "--headless", "--tp", "2", "--gpus", "1,1"],
         "--gpus 1,1 names GPU 1 twice: each rank needs its own GPU"),
        (["run", "--headless", "--tp", "2", "--gpus", "0,x"],
         "--gpus 0,x: give GPU numbers separated by commas, e.g. --gpus 0,1"),
        (["run", "--headless", "--device", "cpu", "--gpus", "0"],
         "--gpus names GPUs: use --device cuda with it"),
        (["bench", "--tp", "1,2", "--gpus", "0", "--out", "unused"],
         "--gpus 0 names 1 GPUs for --tp up to 2: a tp=k point runs on the first k named"),
        (["bench", "--tp", "2", "--gpus", "3,3", "--out", "unused"],
         "--gpus 3,3 names GPU 3 twice: each rank needs its own GPU"),
        (["bench", "--device", "cpu", "--gpus", "0", "--out", "unused"],
         "--gpus names GPUs: use --device cuda with it"),
    ]
    for args, message in cases:
        t0 = time.monotonic()
        p = llmtop(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.strip() == f"llmtop: {message}", args
        assert time.monotonic() - t0 < 30   # refused before an engine (and torch) starts


def test_headless_tp2_names_the_ranks_and_the_collective_share(tmp_path):
    """2 ranks over gloo on synthetic:tiny: the table says where the ranks ran, the profile how
    much of each decode step went to all-reduce; the record keeps both."""
    out = tmp_path / "tp2.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # CPU ranks only where torch sees no GPU
    p = subprocess.run([*LLMTOP, "run", "--headless", "--model", "synthetic:tiny", "--device", "cpu",
                        "--tp", "2", "--prompt-len", "8", "--max-new-tokens", "8", "--ignore-eos",
                        "--profile-steps", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "ranks     tp 2 on cpu, cpu" in p.stdout
    record = json.loads(out.read_text())
    assert record["model"]["devices"] == ["cpu", "cpu"] and record["model"]["gpus"] == []
    assert record["config"]["tp"] == 2 and record["config"]["gpus"] is None
    prof = record["step_profile"]
    assert prof["tp"] == 2 and prof["collective_calls"] > 0 and prof["collective_ms"] > 0
    assert (f"collectives: {prof['collective_ms']:.2f} ms/decode step ({prof['collective_pct']:.0f}% "
            f"of each decode step) in {prof['collective_calls']} all-reduce / all-gather calls over 2 ranks"
            ) in p.stdout


def test_headless_progress_draws_the_step_and_a_bar_on_a_terminal():
    """18.5: headless shows the step's words, a bar and the share on a terminal (and nothing
    when stderr is a file or a pipe)."""
    import io

    from llmtop import headless
    from llmtop.engine.protocol import Status

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    ev = Status("loading", "first start only: dequantizing the GGUF weights to bf16", 0.5, 7.0)
    headless._progress(ev, tty)
    headless._progress(ev, pipe)
    assert "[loading] first start only: dequantizing" in tty.getvalue()
    assert "██████████ " in tty.getvalue() and "50% 7s" in tty.getvalue()
    assert pipe.getvalue() == ""
