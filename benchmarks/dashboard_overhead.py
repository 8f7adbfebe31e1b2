#!/usr/bin/env python
"""What the dashboard costs: launch to first frame, to first token, the UI's own CPU %, and TPOT
with the dashboard attached against the same configuration without it.

    python benchmarks/dashboard_overhead.py --model embedded --device cpu
    python benchmarks/dashboard_overhead.py --model synthetic:llama-2-7b --device cuda --max-new-tokens 128

The dashboard runs for real (`llmtop ...`) in a pseudo-terminal of 160x50; it writes milestones
to the file named by LLMTOP_TRACE (first_frame, first_token, run_done with the engine's TPOT),
which is how this script reads it without scraping the screen. Baselines, on the same model,
device, prompt and token count (--ignore-eos, so every run has exactly the same length):

- headless: `llmtop run --headless --json`, one run per process (what the brief compares with);
- engine only: one engine process driven without any UI for the same number of back-to-back
  runs as the dashboard (warm, like the dashboard's runs after its first).

Rounds interleave the three so that drift on a shared machine hits them alike. Prints plain
figures and the ratios; --json FILE keeps every number.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import psutil

PROMPT = "Explain in one paragraph why the decode phase of a language model is memory bound."


def llmtop_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "llmtop"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "llmtop"]


def common_args(a: argparse.Namespace) -> list[str]:
    out = ["--model", a.model, "--device", a.device, "--dtype", a.dtype, "--prompt", PROMPT,
           "--max-new-tokens", str(a.max_new_tokens), "--ignore-eos", "--batch", str(a.batch)]
    for opt in a.opt:
        out += ["--opt", opt]
    return out


def read_trace(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def dashboard_session(a: argparse.Namespace, workdir: Path) -> dict:
    """One dashboard launch in a pty: milestones, TPOT of each run, the UI process's CPU."""
    trace = workdir / f"trace-{time.time_ns()}.jsonl"
    env = dict(os.environ, LLMTOP_TRACE=str(trace), TERM=os.environ.get("TERM", "xterm-256color"),
               COLUMNS="160", LINES="50")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    first_bytes: list[float] = []
    t0 = time.time()
    proc = subprocess.Popen(llmtop_cmd() + common_args(a), stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=workdir, start_new_session=True)
    os.close(slave)

    def drain() -> None:  # the app blocks if nobody reads its output
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            if not first_bytes:
                seen = (seen + chunk)[-4096:]
                if b"llmtop" in seen:
                    first_bytes.append(time.time())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    ui = psutil.Process(proc.pid)
    deadline = time.monotonic() + a.timeout
    cpu_start = None
    result: dict = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            events = read_trace(trace)
            runs = [e for e in events if e["event"] == "run_done"]
            if cpu_start is None and any(e["event"] == "first_token" for e in events):
                t = ui.cpu_times()
                cpu_start = (time.monotonic(), t.user + t.system)
            if len(runs) >= a.runs:
                break
            time.sleep(0.2)
        if cpu_start is not None and proc.poll() is None:
            t = ui.cpu_times()
            wall = time.monotonic() - cpu_start[0]
            result["ui_cpu_pct"] = 100 * (t.user + t.system - cpu_start[1]) / wall if wall > 0 else None
            result["ui_cpu_window_s"] = wall
        events = read_trace(trace)
    finally:
        if proc.poll() is None:
            os.write(master, b"q")
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
        os.close(master)
    by = {e["event"]: e for e in reversed(events)}
    result["first_frame_s"] = by["first_frame"]["t"] - t0 if "first_frame" in by else None
    result["first_screen_bytes_s"] = first_bytes[0] - t0 if first_bytes else None
    result["first_token_s"] = by["first_token"]["t"] - t0 if "first_token" in by else None
    result["tpot_ms"] = [e["tpot_ms"] for e in events if e["event"] == "run_done"]
    result["exit_code"] = proc.returncode
    return result


def headless_runs(a: argparse.Namespace, workdir: Path) -> list[float]:
    out = []
    for i in range(a.headless):
        path = workdir / f"headless-{time.time_ns()}.json"
        done = subprocess.run(llmtop_cmd() + ["run", "--headless", *common_args(a), "--json", str(path)],
                              capture_output=True, text=True, timeout=a.timeout)
        if done.returncode != 0:
            raise SystemExit(f"headless run failed: {done.stderr.strip()[-400:]}")
        out.append(json.loads(path.read_text())["metrics"]["tpot_ms"])
    return out


def engine_only(a: argparse.Namespace) -> list[float]:
    """The same engine, the same back-to-back runs, no UI at all."""
    from llmtop.engine.client import EngineClient
    from llmtop.protocol import ConfigApplied, Configure, Error, Generate, RunDone
    from llmtop.engine import catalogue

    opts = catalogue.parse_opts(a.opt)
    opts["dtype"] = a.dtype
    client = EngineClient()
    client.start()
    tpots = []
    try:
        client.send(Configure(a.model, a.device, a.dtype, opts))
        while True:
            ev = client.get(timeout=a.timeout)
            if isinstance(ev, Error):
                raise SystemExit(f"engine: {ev.message}")
            if isinstance(ev, ConfigApplied):
                break
        for i in range(a.runs):
            client.send(Generate(run_id=i + 1, prompt=PROMPT, batch=a.batch,
                                 max_new_tokens=a.max_new_tokens, ignore_eos=True))
            while True:
                ev = client.get(timeout=a.timeout)
                if isinstance(ev, Error) and ev.kind in ("engine_dead", "internal", "bad_request"):
                    raise SystemExit(f"engine: {ev.message}")
                if isinstance(ev, RunDone):
                    tpots.append(ev.record["metrics"]["tpot_ms"])
                    break
    finally:
        client.close()
    return tpots


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--opt", action="append", default=[], metavar="AXIS=VALUE")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=6, help="runs per dashboard session and engine-only session")
    p.add_argument("--headless", type=int, default=3, help="llmtop run --headless invocations per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900, help="seconds for any one step")
    p.add_argument("--json", metavar="FILE", help="write every measured number here")
    a = p.parse_args()
    # SIGTERM / SIGHUP unwind through the finally blocks, which close what this script started
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))

    sessions, headless, engine = [], [], []
    with tempfile.TemporaryDirectory(prefix="llmtop-overhead-") as tmp:
        work = Path(tmp)
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}: headless", flush=True)
            headless += headless_runs(a, work)
            print(f"round {r + 1}/{a.rounds}: engine only", flush=True)
            engine += engine_only(a)
            print(f"round {r + 1}/{a.rounds}: dashboard", flush=True)
            sessions.append(dashboard_session(a, work))

    dash_all = [t for s in sessions for t in s["tpot_ms"]]
    dash_warm = [t for s in sessions for t in s["tpot_ms"][1:]]
    engine_warm = [t for i, t in enumerate(engine) if i % a.runs]
    figures = {
        "model": a.model, "device": a.device, "dtype": a.dtype, "opts": a.opt, "batch": a.batch,
        "max_new_tokens": a.max_new_tokens, "cpu_count": os.cpu_count(),
        "first_frame_s": med([s["first_frame_s"] for s in sessions]),
        "first_screen_bytes_s": med([s["first_screen_bytes_s"] for s in sessions]),
        "first_token_s": med([s["first_token_s"] for s in sessions]),
        "ui_cpu_pct": med([s.get("ui_cpu_pct") for s in sessions]),
        "tpot_headless_ms": med(headless),
        "tpot_engine_only_ms": med(engine),
        "tpot_engine_only_warm_ms": med(engine_warm),
        "tpot_dashboard_ms": med(dash_all),
        "tpot_dashboard_warm_ms": med(dash_warm),
        "raw": {"sessions": sessions, "headless": headless, "engine_only": engine},
    }
    d, h, e = figures["tpot_dashboard_ms"], figures["tpot_headless_ms"], figures["tpot_engine_only_ms"]
    figures["ratio_dashboard_vs_headless"] = d / h if d and h else None
    figures["ratio_dashboard_vs_engine_only"] = d / e if d and e else None
    dw, ew = figures["tpot_dashboard_warm_ms"], figures["tpot_engine_only_warm_ms"]
    figures["ratio_warm_dashboard_vs_engine_only"] = dw / ew if dw and ew else None

    print()
    print(f"model {a.model} on {a.device} ({a.dtype}), {a.max_new_tokens} tokens x batch {a.batch}, "
          f"{a.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"launch -> first frame (app trace)        {fmt(figures['first_frame_s'], 's')}")
    print(f"launch -> first screen bytes (pty)       {fmt(figures['first_screen_bytes_s'], 's')}")
    print(f"launch -> first token                    {fmt(figures['first_token_s'], 's')}")
    print(f"dashboard CPU while streaming            {fmt(figures['ui_cpu_pct'], '% of one core', 1)}")
    print(f"TPOT llmtop run --headless   (n={len(headless):2d})    {fmt(h, 'ms')}")
    print(f"TPOT engine only, no UI      (n={len(engine):2d})    {fmt(e, 'ms')}")
    print(f"TPOT with the dashboard      (n={len(dash_all):2d})    {fmt(d, 'ms')}")
    print(f"ratio dashboard / headless               {fmt(figures['ratio_dashboard_vs_headless'], '', 3)}")
    print(f"ratio dashboard / engine only            {fmt(figures['ratio_dashboard_vs_engine_only'], '', 3)}")
    print(f"ratio, runs after the first of each      {fmt(figures['ratio_warm_dashboard_vs_engine_only'], '', 3)}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))
        print(f"written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
