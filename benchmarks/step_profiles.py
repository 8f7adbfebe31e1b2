"""Where a decode step's time goes, per configuration: the engine's step profiler side by side.

Answers "why is configuration X slow" with the profiler rather than a guess: per configuration,
the device's busy vs idle time per step (idle = waiting for the host to launch work) and the
kernels that take the busy time. One engine process, reconfigured in place as the dashboard
does; each configuration gets a warm-up run, then a run whose prefill and first N decode steps
are profiled.

    python benchmarks/step_profiles.py --model synthetic:llama-2-7b --device cuda \
        --configs baseline,sdpa,flash,cudnn,static,compile_full --out results/
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from optimizations import CONFIGS, until

from llmtop.engine.client import EngineClient
from llmtop.headless import profile_table
from llmtop.engine.protocol import Configure, DeviceInfo, Error, Generate, GuardResult, RunDone, StepProfile


def profile_config(client: EngineClient, args: argparse.Namespace, name: str) -> dict:
    client.send(Configure(args.model, args.device, args.dtype, CONFIGS[name]))
    ev, seen = until(client, (GuardResult, Error))
    if isinstance(ev, Error):
        return {"config": name, "error": ev.message}
    device = next((e.name for e in seen if isinstance(e, DeviceInfo)), args.device)
    # The unprofiled run measures TPOT; the profiled run then starts at a prompt length this
    # process has not run yet (same static-cache bucket), so per-shape host work that a warm
    # run would skip (a kernel plan built per KV length, say) is inside the profiled steps.
    client.send(Generate(run_id=0, prompt_len=args.prompt_len, batch=args.batch,
                         max_new_tokens=32, ignore_eos=True))
    warm, _ = until(client, (RunDone, Error))
    if isinstance(warm, Error):
        return {"config": name, "error": warm.message}
    # the same run again: every shape has now been seen once, so a gap between the two TPOTs
    # is per-shape work (plans, tuning, compiles), not the steady-state kernels
    client.send(Generate(run_id=0, prompt_len=args.prompt_len, batch=args.batch,
                         max_new_tokens=32, ignore_eos=True))
    again, _ = until(client, (RunDone, Error))
    client.send(Generate(run_id=1, prompt_len=args.prompt_len + 40, batch=args.batch,
                         max_new_tokens=args.steps + 8, ignore_eos=True, profile_steps=args.steps))
    done, seen = until(client, (RunDone, Error))
    prof = next((e for e in seen if isinstance(e, StepProfile)), None)
    if isinstance(done, Error) or prof is None:
        return {"config": name, "error": getattr(done, "message", "no step profile")}
    return {"config": name, "device": device, "tpot_ms": warm.record["metrics"]["tpot_ms"],
            "tpot_again_ms": (again.record["metrics"]["tpot_ms"] if isinstance(again, RunDone)
                              else None),
            "profile": asdict(prof)}


def render(results: list[dict], args: argparse.Namespace) -> str:
    device = next((r["device"] for r in results if "device" in r), args.device)
    lines = [f"Step profiles: {args.model} on {device}, batch {args.batch}, prompt "
             f"{args.prompt_len}; prefill + {args.steps} decode steps profiled per configuration.",
             "", "| config | TPOT ms (unprofiled run, 32 tokens) | same run again | profiled ms/step | device busy ms | "
             "idle ms | busy % | top kernel | top host op (own CPU) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['error']} | | | | | | | |")
            continue
        p = r["profile"]
        top = p["top_kernels"][0] if p["top_kernels"] else {"name": "-", "pct": 0}
        host = p["top_host_ops"][0] if p.get("top_host_ops") else {"name": "-", "pct": 0}
        again = f"{r['tpot_again_ms']:.2f}" if r.get("tpot_again_ms") else "-"
        lines.append(f"| {r['config']} | {r['tpot_ms']:.2f} | {again} | {p['step_ms']:.2f} | "
                     f"{p['busy_ms']:.2f} | {p['idle_ms']:.2f} | "
                     f"{100 * p['busy_ms'] / max(p['step_ms'], 1e-9):.0f}% | "
                     f"{top['name'][:60]} ({top['pct']:.0f}%) | {host['name'][:40]} ({host['pct']:.0f}%) |")
    for r in results:
        if "profile" in r:
            lines += ["", f"### {r['config']}", "", "```text",
                      profile_table(StepProfile(**r["profile"])), "```"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthetic:llama-2-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--configs", default="baseline,sdpa,flash,cudnn,static,tunableop,compile_full")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    client = EngineClient()
    client.start()
    results = []
    try:
        for name in args.configs.split(","):
            results.append(profile_config(client, args, name))
            r = results[-1]
            print(name, r.get("error") or f"{r['profile']['step_ms']:.2f} ms/step, "
                  f"busy {r['profile']['busy_ms']:.2f} ms", flush=True)
    finally:
        client.close()
    report = render(results, args)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step_profiles.md").write_text(report + "\n")
        (out / "step_profiles.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
