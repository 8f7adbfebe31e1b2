"""TP=1 against TP=2 (or any sizes) through the real engine: TTFT, TPOT, collectives, telemetry.

For the 2 x H100 run of issue 7. One engine process, reconfigured per TP size (the followers
start and end with it). The engine places the ranks: on the GPUs --gpus names (a tp=k point on
the first k), else on the set the NVML link matrix recommends; each point reports which GPUs
(ModelInfo.gpus, nvidia-smi's numbers) and why. For each TP size and batch: a 4-token warm-up,
the measured run, then a short profiled run (`Generate(profile_steps=N)`) whose StepProfile
gives the time per decode step in collectives and its share (NCCL kernels on a GPU; gloo's
all-reduce / all-gather on a CPU), measured by the engine's step profiler. The GPUs' telemetry
is sampled at 10 Hz by llmtop.profilers' Sampler, in this process, over the measured run's
window, for every GPU any point ran on. Prints a Markdown table; --out writes it and the raw
figures as JSON.

    NCCL_NVLS_ENABLE=0 python benchmarks/tp_compare.py --out results/    # 2 GPUs, Llama-2-7B shape
    NCCL_NVLS_ENABLE=0 python benchmarks/tp_compare.py --gpus 1,0 --out results/   # named set
    python benchmarks/tp_compare.py --model synthetic:tiny --device cpu \
        --prompt-len 16 --max-new-tokens 8 --profile-steps 2              # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from optimizations import until  # the same event wait as the single-GPU benchmark (this folder)
from llmtop.engine.client import EngineClient, needs_fresh_engine
from llmtop.profilers.gpu import detect_backend
from llmtop.profilers.sampler import Sampler
from llmtop.engine.protocol import (Configure, DeviceInfo, Error, Generate, GuardResult, ModelInfo,
                             RunDone, StepProfile)



def telemetry(sampler: Sampler, indices: list[int], t0_ns: int, t1_ns: int) -> dict[str, dict]:
    """Per GPU over [t0, t1]: mean utilization and power, peak memory used, mean SM clock."""
    out = {}
    for i in indices:
        samples = sampler.samples_between(t0_ns, t1_ns, i)

        def mean(field: str) -> float | None:
            values = [getattr(s, field) for s in samples if getattr(s, field) is not None]
            return statistics.fmean(values) if values else None

        used = [s.mem_used for s in samples if s.mem_used is not None]
        out[str(i)] = {"samples": len(samples), "util_pct": mean("util_pct"),
                       "power_w": mean("power_w"), "sm_clock_mhz": mean("sm_clock_mhz"),
                       "mem_used_gb": max(used) / 1e9 if used else None}
    return out


def collectives(profile: StepProfile) -> dict:
    """The engine's own collective figures (every NCCL kernel of the decode steps, not only the
    top 15), with the collective kernels among the top ones by name, for the reader."""
    hits = [k for k in profile.top_kernels if "nccl" in k["name"].lower()
            or k["name"].startswith("gloo:")]
    return {"collective_ms_per_step": profile.collective_ms,
            "collective_pct_of_step": profile.collective_pct,
            "collective_calls": profile.collective_calls,
            "busy_pct": 100 * profile.busy_ms / profile.step_ms if profile.step_ms else None,
            "step_ms": profile.step_ms, "kernels": [k["name"][:60] for k in hits],
            "trace": profile.trace_path}


def run_point(client: EngineClient, sampler: Sampler, gpus: list[int], args: argparse.Namespace,
              batch: int) -> dict:
    base = dict(prompt_len=args.prompt_len, batch=batch, ignore_eos=True)
    client.send(Generate(run_id=0, max_new_tokens=4, **base))  # warm-up: allocator, kernels
    ev, _ = until(client, (RunDone, Error))
    if isinstance(ev, Error):
        return {"error": f"{ev.kind}: {ev.message}"}
    client.send(Generate(run_id=1, max_new_tokens=args.max_new_tokens, **base))
    ev, _ = until(client, (RunDone, Error))
    if isinstance(ev, Error):
        return {"error": f"{ev.kind}: {ev.message}"}
    rec = ev.record
    m = rec["metrics"]
    last_ns = max(t["t_ns"] for row in rec["tokens"] for t in row)
    point = {"ttft_ms": m["ttft_ms"], "tpot_ms": m["tpot_ms"], "itl_p99_ms": m["itl"]["p99"],
             "tokens_per_s": m["tokens_per_s"], "decode_pct_of_floor": rec["roofline"]["decode_pct"],
             "gpus": telemetry(sampler, gpus, rec["start_ns"], last_ns)}
    if args.profile_steps > 0:
        client.send(Generate(run_id=2, max_new_tokens=args.profile_steps + 2,
                             profile_steps=args.profile_steps, **base))
        ev, seen = until(client, (RunDone, Error))
        prof = next((e for e in seen if isinstance(e, StepProfile)), None)
        if prof is not None:
            point["profile"] = collectives(prof)
    return point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="synthetic:llama-2-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--opt", action="append", default=[], metavar="AXIS=VALUE",
                    help="optimizations for every point (default: attention=sdpa, dynamic cache)")
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--gpus", default="", metavar="0,1",
                    help="the ranks' GPUs (nvidia-smi numbers, rank order; a tp=k point runs on the "
                         "first k); default: the engine picks the recommended set")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    opts = dict(pair.split("=", 1) for pair in args.opt)
    tps = [int(t) for t in args.tp.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    named = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    backend = detect_backend()
    statics = backend.devices()
    sampler = Sampler(backend, hz=10).start()
    client = EngineClient()
    client.start()
    header: dict = {"gpus": {}, "ranks": {}}
    results: list[dict] = []
    try:
        applied = None
        for tp in tps:
            t0 = time.perf_counter()
            want = Configure(args.model, args.device, args.dtype, opts, tp,
                             named[:tp] if named else None)
            if needs_fresh_engine(applied, want):  # a GPU group ends with its process
                client.close()
                client = EngineClient()
                client.start()
            client.send(want)
            ev, seen = until(client, (GuardResult, Error))
            if isinstance(ev, Error):
                print(f"tp={tp}: {ev.message}", flush=True)
                results.append({"tp": tp, "error": ev.message})
                continue
            ranks: list[int] = []
            for e in seen:
                if isinstance(e, DeviceInfo):
                    header["device"] = (f"{e.name}: {e.mem_bw_gb_s:.0f} GB/s, "
                                        f"{e.peak_tflops:.0f} TFLOP/s measured (one device)")
                if isinstance(e, ModelInfo):
                    header["model"] = f"{e.name} ({e.params / 1e9:.2f} B params, {e.dtype})"
                    header.setdefault("devices", {})[str(tp)] = e.devices
                    # the engine's GPUs, nvidia-smi's numbers: telemetry follows them
                    ranks = list(e.gpus)
                    header["ranks"][str(tp)] = {"gpus": ranks, "devices": e.devices,
                                                "why": e.gpu_choice}
            applied = want
            guard = ev.status + (f" at {ev.diverged_at}" if ev.diverged_at is not None else "")
            setup_s = time.perf_counter() - t0
            for d in statics:
                if d.index in ranks:
                    header["gpus"][str(d.index)] = d.name
            for batch in batches:
                point = run_point(client, sampler, ranks, args, batch)
                point.update(tp=tp, batch=batch, guard=guard, setup_s=setup_s, ranks=ranks)
                results.append(point)
                print(json.dumps(point), flush=True)
    finally:
        client.close()
        sampler.stop()
        backend.close()
    gpus = sorted(int(i) for i in header["gpus"])
    table = render(results, header, gpus, args)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tp_compare.md").write_text(table + "\n")
        (out / "tp_compare.json").write_text(json.dumps(
            {"header": header, "args": vars(args), "results": results}, indent=1))


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render(results: list[dict], header: dict, gpus: list[int], args: argparse.Namespace) -> str:
    base = {r["batch"]: r for r in results if r.get("tp") == 1 and "tpot_ms" in r}
    gpu_cols = "".join(f" GPU{i} util % / W / GB |" for i in gpus)
    names = ", ".join(f"GPU{i} {n}" for i, n in header.get("gpus", {}).items()) or "no GPU telemetry"
    lines = [f"Model: {header.get('model', args.model)}; device: {header.get('device', args.device)}; "
             f"{names}.", f"Prompt {args.prompt_len} tokens, {args.max_new_tokens} new tokens, "
             f"greedy; opts: {' '.join(args.opt) or 'defaults'}. Collectives: the engine's step "
             f"profile, every collective kernel over {args.profile_steps} decode steps (prefill "
             "left out).", ""]
    for tp, r in header.get("ranks", {}).items():
        lines.append(f"TP={tp}: ranks on {', '.join(r['devices'])} (GPUs "
                     f"{','.join(map(str, r['gpus'])) or 'n/a'}: {r['why'] or 'n/a'})")
    lines += ["", "| TP | batch | GPUs | TTFT ms | TPOT ms | TPOT vs TP=1 | tok/s | collectives "
              f"ms/step (% of decode step) | busy % of step | guard |{gpu_cols}",
              "|---" * (10 + len(gpus)) + "|"]
    for r in results:
        if "tpot_ms" not in r:
            lines.append(f"| {r['tp']} | {r.get('batch', '-')} | | {r.get('error', '')} |"
                         + " |" * (6 + len(gpus)))
            continue
        b = base.get(r["batch"])
        speed = f"{b['tpot_ms'] / r['tpot_ms']:.2f}x" if b else "-"
        p = r.get("profile", {})
        coll = (f"{p['collective_ms_per_step']:.2f} ({_f(p['collective_pct_of_step'], '.0f')}%)"
                if p else "n/a")
        cells = ""
        for i in gpus:
            g = r["gpus"].get(str(i))
            cells += (f" {_f(g.get('util_pct'), '.0f')} / {_f(g.get('power_w'), '.0f')} / "
                      f"{_f(g.get('mem_used_gb'), '.1f')} |" if g else " - |")
        ranks = ",".join(map(str, r.get("ranks", []))) or "n/a"
        lines.append(f"| {r['tp']} | {r['batch']} | {ranks} | {r['ttft_ms']:.1f} | {r['tpot_ms']:.2f} | "
                     f"{speed} | {r['tokens_per_s']:.0f} | {coll} | "
                     f"{_f(p.get('busy_pct'), '.0f')} | {r['guard']} |{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
