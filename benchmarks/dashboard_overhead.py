#!/usr/bin/env python
"""What the dashboard costs: launch to first frame, to first token, the UI's own CPU %, and TPOT
with the dashboard attached against the same configuration without it.

    python benchmarks/dashboard_overhead.py --model embedded --device cpu
    python benchmarks/dashboard_overhead.py --model synthetic:llama-2-7b --device cuda --max-new-tokens 128

The dashboard runs for real (`llmtop ...`) in a pseudo-terminal of 160x50; it writes milestones
to the file named by LLMTOP_TRACE (first_frame, first_token, run_done with the engine's TPOT),
which is how this script reads it without scraping the screen. Variants, all on the same model,
device, prompt and token count (--ignore-eos, so every run has exactly the same length):

- headless: `llmtop run --headless --json`, one run per process, torch's default threads;
- headless-same-threads: the same with `--engine-threads K`, K being the thread count the
  dashboard's engine uses (`llmtop info --json`; it keeps a core for the UI when torch would
  take them all, engine/threads.py); only when K differs from the default;
- dashboard: one dashboard session of --runs runs;
- dashboard-all-threads: the dashboard with the engine on torch's default threads (what it
  did before it kept a core for itself); opt in with --variants;
- engine: one engine process driven without any UI for --runs back-to-back runs, at K threads.

Every round runs each variant once, in an order that rotates from round to round, so drift on a
shared machine hits them alike; each round's ratio compares runs minutes apart, and the figure
reported is the median of the rounds' ratios, with the load average of each round. The last
line, OVERHEAD, is the acceptance figure: the dashboard against headless with the same engine
threads. --json FILE keeps every number.
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


def common_args(a: argparse.Namespace, threads: int | None = None) -> list[str]:
    out = ["--model", a.model, "--device", a.device, "--dtype", a.dtype, "--prompt", PROMPT,
           "--max-new-tokens", str(a.max_new_tokens), "--ignore-eos", "--batch", str(a.batch)]
    for opt in a.opt:
        out += ["--opt", opt]
    if threads is not None:
        out += ["--engine-threads", str(threads)]
    return out


def engine_threads(a: argparse.Namespace) -> dict:
    """The engine's thread counts headless and beside the dashboard, as llmtop itself plans them."""
    done = subprocess.run(llmtop_cmd() + ["info", "--json", "--device", a.device], capture_output=True,
                          text=True, timeout=a.timeout)
    if done.returncode != 0:
        raise SystemExit(f"llmtop info failed: {done.stderr.strip()[-400:]}")
    threads = json.loads(done.stdout).get("engine_threads") or {}
    if "error" in threads:
        raise SystemExit(f"llmtop info: {threads['error']}")
    return threads


def read_trace(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def dashboard_session(a: argparse.Namespace, workdir: Path, threads: int | None = None) -> dict:
    """One dashboard launch in a pty: milestones, TPOT of each run, the UI process's CPU."""
    trace = workdir / f"trace-{time.time_ns()}.jsonl"
    env = dict(os.environ, LLMTOP_TRACE=str(trace), TERM=os.environ.get("TERM", "xterm-256color"),
               COLUMNS="160", LINES="50")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    first_bytes: list[float] = []
    tail = [b""]  # the screen's last bytes: why a dashboard that exits early did
    t0 = time.time()
    proc = subprocess.Popen(llmtop_cmd() + common_args(a, threads), stdin=slave, stdout=slave, stderr=slave,
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
            tail[0] = (tail[0] + chunk)[-2000:]
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
    if not result["tpot_ms"]:
        text = tail[0].decode(errors="replace")
        raise SystemExit(f"the dashboard measured no run (exit code {proc.returncode}); its last "
                         f"output:\n{text[-600:]}")
    return result


def headless_runs(a: argparse.Namespace, workdir: Path, threads: int | None = None) -> list[float]:
    out = []
    for i in range(a.headless):
        path = workdir / f"headless-{time.time_ns()}.json"
        done = subprocess.run(llmtop_cmd() + ["run", "--headless", *common_args(a, threads), "--json", str(path)],
                              capture_output=True, text=True, timeout=a.timeout)
        if done.returncode != 0:
            raise SystemExit(f"headless run failed: {done.stderr.strip()[-400:]}")
        out.append(json.loads(path.read_text())["metrics"]["tpot_ms"])
    return out


def engine_only(a: argparse.Namespace, threads: int | None = None) -> list[float]:
    """The same engine, the same back-to-back runs, no UI at all."""
    from llmtop.engine.client import EngineClient
    from llmtop.engine.protocol import ConfigApplied, Configure, Error, Generate, RunDone
    from llmtop.engine import catalogue

    opts = catalogue.parse_opts(a.opt)
    opts["dtype"] = a.dtype
    client = EngineClient(threads=threads)
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


VARIANTS = ("headless", "headless-same-threads", "dashboard", "dashboard-all-threads", "engine")


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--opt", action="append", default=[], metavar="AXIS=VALUE")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=4, help="runs per dashboard session and engine-only session")
    p.add_argument("--headless", type=int, default=2, help="llmtop run --headless invocations per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="headless,headless-same-threads,dashboard",
                   help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--timeout", type=float, default=900, help="seconds for any one step")
    p.add_argument("--json", metavar="FILE", help="write every measured number here")
    a = p.parse_args()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "dashboard" not in variants or "headless" not in variants:
        p.error(f"--variants needs headless and dashboard, from {', '.join(VARIANTS)} (not {unknown})")
    # SIGTERM / SIGHUP unwind through the finally blocks, which close what this script started
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))

    threads = engine_threads(a)
    default_k, dash_k = threads["headless"]["threads"], threads["dashboard"]["threads"]
    if dash_k == default_k:  # nothing kept for the UI: these would repeat other variants
        variants = [v for v in variants if v not in ("headless-same-threads", "dashboard-all-threads")]
    print(f"engine threads: {default_k} headless, {dash_k} beside the dashboard: "
          f"{threads['dashboard']['reason'] or 'as headless'}; {os.cpu_count()} CPUs", flush=True)

    def measure(variant: str, work: Path) -> tuple[list[float], dict | None]:
        if variant == "headless":
            return headless_runs(a, work), None
        if variant == "headless-same-threads":
            return headless_runs(a, work, dash_k), None
        if variant == "engine":
            return engine_only(a, dash_k), None
        session = dashboard_session(a, work, default_k if variant == "dashboard-all-threads" else None)
        return session["tpot_ms"], session

    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="llmtop-overhead-") as tmp:
        work = Path(tmp)
        for r in range(a.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            rnd: dict = {"order": order, "load_before": os.getloadavg(), "tpot_ms": {}, "sessions": {}}
            for variant in order:
                print(f"round {r + 1}/{a.rounds}: {variant}", flush=True)
                tpots, session = measure(variant, work)
                rnd["tpot_ms"][variant] = tpots
                if session is not None:
                    rnd["sessions"][variant] = session
            rnd["load_after"] = os.getloadavg()
            rnd["median_ms"] = {v: med(t) for v, t in rnd["tpot_ms"].items()}
            rnd["ratios"] = {f"{v}/headless": ratio(rnd["median_ms"][v], rnd["median_ms"]["headless"])
                             for v in variants if v != "headless"}
            if "headless-same-threads" in variants:
                rnd["ratios"]["dashboard/headless-same-threads"] = ratio(
                    rnd["median_ms"]["dashboard"], rnd["median_ms"]["headless-same-threads"])
            rounds.append(rnd)
            ui = rnd["sessions"].get("dashboard", {}).get("ui_cpu_pct")
            print("  " + "  ".join(f"{v} {fmt(m, 'ms', 1)}" for v, m in rnd["median_ms"].items())
                  + f"  UI {fmt(ui, '%', 1)}  load {rnd['load_before'][0]:.2f}->{rnd['load_after'][0]:.2f}",
                  flush=True)

    sessions = [s for r in rounds for s in r["sessions"].values()]
    dash = [s for r in rounds for v, s in r["sessions"].items() if v == "dashboard"]
    ratio_names = list(rounds[0]["ratios"])
    figures = {
        "model": a.model, "device": a.device, "dtype": a.dtype, "opts": a.opt, "batch": a.batch,
        "max_new_tokens": a.max_new_tokens, "cpu_count": os.cpu_count(), "engine_threads": threads,
        "first_frame_s": med([s["first_frame_s"] for s in sessions]),
        "first_screen_bytes_s": med([s["first_screen_bytes_s"] for s in sessions]),
        "first_token_s": med([s["first_token_s"] for s in sessions]),
        "ui_cpu_pct": med([s.get("ui_cpu_pct") for s in dash]),
        "tpot_ms": {v: med([t for r in rounds for t in r["tpot_ms"][v]]) for v in variants},
        "runs": {v: sum(len(r["tpot_ms"][v]) for r in rounds) for v in variants},
        "ratios": {n: med([r["ratios"][n] for r in rounds]) for n in ratio_names},
        "load_avg_1min": [round(r["load_before"][0], 2) for r in rounds],
        "rounds": rounds,
    }

    print()
    print(f"model {a.model} on {a.device} ({a.dtype}), {a.max_new_tokens} tokens x batch {a.batch}, "
          f"{a.rounds} rounds, {os.cpu_count()} CPUs, engine threads {default_k} headless / {dash_k} "
          f"with the dashboard")
    print("load average (1 min) at each round's start: "
          + ", ".join(f"{x:.2f}" for x in figures["load_avg_1min"]))
    print(f"launch -> first frame (app trace)          {fmt(figures['first_frame_s'], 's')}")
    print(f"launch -> first screen bytes (pty)         {fmt(figures['first_screen_bytes_s'], 's')}")
    print(f"launch -> first token                      {fmt(figures['first_token_s'], 's')}")
    print(f"dashboard CPU while streaming              {fmt(figures['ui_cpu_pct'], '% of one core', 1)}")
    for v in variants:
        k = default_k if v in ("headless", "dashboard-all-threads") else dash_k
        print(f"TPOT {v:<22} ({k} thr, n={figures['runs'][v]:2d})  {fmt(figures['tpot_ms'][v], 'ms')}")
    for n in ratio_names:
        per = ", ".join(fmt(r["ratios"][n], "", 3).strip() for r in rounds)
        print(f"ratio {n:<37} {fmt(figures['ratios'][n], '', 3).strip()}  (median of rounds: {per})")
    # the acceptance figure: the dashboard against headless with the same engine threads
    same = "dashboard/headless-same-threads" if "dashboard/headless-same-threads" in figures["ratios"] \
        else "dashboard/headless" if dash_k == default_k else None
    overhead = figures["ratios"].get(same) if same else None
    figures["overhead_pct"] = None if overhead is None else 100 * (overhead - 1)
    if overhead is None:
        print("OVERHEAD n/a: add headless-same-threads to --variants (the dashboard's engine runs "
              f"{dash_k} threads, headless {default_k})")
    else:
        print(f"OVERHEAD of the dashboard on TPOT: {100 * (overhead - 1):+.1f} % (ratio {overhead:.3f}, "
              f"{same.replace('/', ' / ')}, {dash_k} engine threads each; goal at most +2 %: "
              f"{'met' if overhead <= 1.02 else 'NOT met'})")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))
        print(f"written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
