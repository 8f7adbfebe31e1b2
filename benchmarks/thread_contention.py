#!/usr/bin/env python
"""Why a dashboard slows a CPU engine: TPOT of the engine on N threads and on fewer, alone and
beside a process that, like the dashboard, wakes up often and uses a slice of one core.

    python benchmarks/thread_contention.py                       # torch's default vs one fewer
    python benchmarks/thread_contention.py --threads 2,1 --busy-ms 5 --idle-ms 28 --rounds 6

torch runs each op on a team of OpenMP threads that meet at a barrier; with one thread per core,
any other runnable process must preempt a member and the whole op waits for it. The "UI-like"
load is a busy loop of --busy-ms every --busy-ms + --idle-ms (default 5 / 28 ms: 15 % of a
core, what the dashboard uses while streaming). One engine per thread count stays up for the
whole script; every round runs each (threads, load) pair once, so drift hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

LOAD = """
import time
busy, idle = {busy}, {idle}
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy:
        pass
    time.sleep(idle)
"""
PROMPT = "Explain in one paragraph why the decode phase of a language model is memory bound."


def main() -> int:
    from llmtop.engine import catalogue, threads
    from llmtop.engine.client import EngineClient
    from llmtop.engine.protocol import ConfigApplied, Configure, Error, Generate, RunDone

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: torch's default and one fewer)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--busy-ms", type=float, default=5.0)
    p.add_argument("--idle-ms", type=float, default=28.0)
    a = p.parse_args()
    if a.threads:
        counts = [int(x) for x in a.threads.split(",")]
    else:
        import torch

        default = torch.get_num_threads()
        counts = sorted({default, max(1, default - 1)}, reverse=True)

    def start(n: int) -> EngineClient:
        client = EngineClient(threads=n)
        client.start()
        client.send(Configure(a.model, "cpu", "bf16", {**catalogue.DEFAULTS, "dtype": "bf16"}))
        while True:
            ev = client.get(timeout=600)
            if isinstance(ev, Error):
                raise SystemExit(f"engine: {ev.message}")
            if isinstance(ev, ConfigApplied):
                return client

    def tpot(client: EngineClient, run_id: int, tokens: int) -> float:
        client.send(Generate(run_id=run_id, prompt=PROMPT, max_new_tokens=tokens, ignore_eos=True))
        while True:
            ev = client.get(timeout=600)
            if isinstance(ev, RunDone):
                return ev.record["metrics"]["tpot_ms"]

    engines = {n: start(n) for n in counts}
    results: dict[tuple[int, bool], list[float]] = {}
    run_id = 0
    try:
        for client in engines.values():
            tpot(client, 0, 8)   # warm-up
        for r in range(a.rounds):
            load_avg = os.getloadavg()[0]
            for load in (False, True):
                code = LOAD.format(busy=a.busy_ms / 1000, idle=a.idle_ms / 1000)
                burner = subprocess.Popen([sys.executable, "-c", code]) if load else None
                time.sleep(0.3)
                try:
                    for n, client in engines.items():
                        run_id += 1
                        results.setdefault((n, load), []).append(tpot(client, run_id, a.max_new_tokens))
                finally:
                    if burner is not None:
                        burner.kill()
                        burner.wait()
            print(f"round {r + 1}: load average {load_avg:.2f}  " + "  ".join(
                f"{n} thr{' +UI-like' if load else ''} {v[-1]:.1f}" for (n, load), v in results.items()),
                flush=True)
    finally:
        for client in engines.values():
            client.close()
    share = a.busy_ms / (a.busy_ms + a.idle_ms)
    print(f"\n{threads.usable_cpus()} usable CPUs; UI-like load: {share:.0%} of one core")
    for (n, load), v in sorted(results.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        print(f"TPOT {n} thread{'s' if n > 1 else ' '} {'beside the load' if load else 'alone':<15}  median "
              f"{statistics.median(v):7.1f} ms  (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
