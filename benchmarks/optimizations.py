"""Every optimization configuration through the real engine: TTFT, TPOT, speedup vs baseline.

One engine process, reconfigured between configurations (as the dashboard does). For each
point a 4-token warm-up run compiles or captures what the configuration needs, then the
measured run. Prints a Markdown table; --out writes it with the raw figures as JSON.

    python benchmarks/optimizations.py --model synthetic:llama-2-7b --device cuda \
        --batch 1,8 --prompt-len 128,2048 --max-new-tokens 128 --out results/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import (Configure, DeviceInfo, Error, Generate, GuardResult, ModelInfo,
                             RunDone)

CONFIGS = {
    "baseline": {"attention": "eager", "kv": "dynamic", "compile": "off"},
    "sdpa": {"attention": "sdpa"},
    "flash": {"attention": "flash"},
    "mem_efficient": {"attention": "mem_efficient"},
    "cudnn": {"attention": "cudnn"},
    "flex": {"attention": "flex"},
    "static": {"attention": "sdpa", "kv": "static"},
    "paged": {"attention": "sdpa", "kv": "paged"},
    "tunableop": {"attention": "sdpa", "gemm": "tunableop"},
    "compile_layers": {"attention": "sdpa", "compile": "layers"},
    "compile_full": {"attention": "sdpa", "kv": "static", "compile": "full"},
}


def until(client: EngineClient, types: tuple, timeout: float = 900) -> tuple[object, list]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        ev = client.get(timeout=max(1.0, deadline - time.monotonic()))
        seen.append(ev)
        if isinstance(ev, types):
            return ev, seen


def run_point(client: EngineClient, batch: int, plen: int, new: int) -> dict:
    client.send(Generate(run_id=0, prompt_len=plen, batch=batch, max_new_tokens=4, ignore_eos=True))
    ev, _ = until(client, (RunDone, Error))
    if isinstance(ev, Error):
        return {"error": ev.kind, "message": ev.message}
    client.send(Generate(run_id=1, prompt_len=plen, batch=batch, max_new_tokens=new, ignore_eos=True))
    ev, _ = until(client, (RunDone, Error))
    if isinstance(ev, Error):
        return {"error": ev.kind, "message": ev.message}
    m = ev.record["metrics"]
    # stalls: compiles, recompiles, captures or tunings that landed inside the measured run
    return {"ttft_ms": m["ttft_ms"], "tpot_ms": m["tpot_ms"], "itl_p99_ms": m["itl"]["p99"],
            "tpot_steady_ms": m.get("tpot_steady_ms"), "stalls": m.get("stalls", 0),
            "decode_pct": ev.record["roofline"]["decode_pct"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthetic:llama-2-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-len", default="128,2048")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    plens = [int(p) for p in args.prompt_len.split(",")]
    client = EngineClient()
    client.start()
    results: list[dict] = []
    header = {}
    try:
        for name in args.configs.split(","):
            t0 = time.perf_counter()
            client.send(Configure(args.model, args.device, args.dtype, CONFIGS[name]))
            ev, seen = until(client, (GuardResult, Error))
            if isinstance(ev, Error):
                print(f"{name}: {ev.message}", flush=True)
                results.append({"config": name, "error": ev.message})
                continue
            for e in seen:
                if isinstance(e, DeviceInfo):
                    header["device"] = f"{e.name}: {e.mem_bw_gb_s:.0f} GB/s, {e.peak_tflops:.0f} TFLOP/s measured"
                if isinstance(e, ModelInfo):
                    header["model"] = f"{e.name} ({e.params / 1e9:.2f} B params, {e.dtype})"
            guard = f"{ev.status}" + (f" at {ev.diverged_at}" if ev.diverged_at is not None else "")
            if ev.margin is not None and ev.tolerance is not None:
                guard += f" (margin {ev.margin:.3g}, tolerance {ev.tolerance:.3g})"
            setup_s = time.perf_counter() - t0
            for batch in batches:
                for plen in plens:
                    point = run_point(client, batch, plen, args.max_new_tokens)
                    point.update(config=name, batch=batch, prompt_len=plen, guard=guard,
                                 setup_s=setup_s)
                    results.append(point)
                    print(json.dumps(point), flush=True)
    finally:
        client.close()
    table = render(results, header, args)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "optimizations.md").write_text(table + "\n")
        (out / "optimizations.json").write_text(json.dumps({"header": header, "results": results},
                                                           indent=1))


def render(results: list[dict], header: dict, args: argparse.Namespace) -> str:
    base = {(r["batch"], r["prompt_len"]): r for r in results
            if r.get("config") == "baseline" and "ttft_ms" in r}
    import torch
    import transformers

    lines = [f"Model: {header.get('model', args.model)}; device: {header.get('device', args.device)}; "
             f"{args.max_new_tokens} new tokens, greedy; torch {torch.__version__}, "
             f"transformers {transformers.__version__}.", "",
             "| config | batch | prompt | TTFT ms | TPOT ms | ITL p99 ms | stalls in run | "
             "TTFT speedup | TPOT speedup | decode % of floor | guard vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "batch" not in r:
            lines.append(f"| {r['config']} | - | - | {r.get('error', '')} | | | | | | | |")
            continue
        if "ttft_ms" not in r:
            lines.append(f"| {r['config']} | {r['batch']} | {r['prompt_len']} | {r['error']} | | | | | | | |")
            continue
        b = base.get((r["batch"], r["prompt_len"]))
        s1 = f"{b['ttft_ms'] / r['ttft_ms']:.2f}x" if b else "-"
        s2 = f"{b['tpot_ms'] / r['tpot_ms']:.2f}x" if b else "-"
        pct = f"{r['decode_pct']:.0f}%" if r["decode_pct"] is not None else "n/a"
        lines.append(f"| {r['config']} | {r['batch']} | {r['prompt_len']} | {r['ttft_ms']:.1f} | "
                     f"{r['tpot_ms']:.2f} | {r['itl_p99_ms']:.2f} | {r['stalls']} | {s1} | {s2} | "
                     f"{pct} | {r['guard']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
