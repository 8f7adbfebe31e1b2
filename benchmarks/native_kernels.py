"""The native backend's decode kernels one by one on a CUDA card (issue 16): each 7B weight
GEMV (engine/native/gemv.py) over a sweep of tilings against cuBLAS and against the torch ops it
replaces, and the decode attention kernel (engine/native/attention.py) over its split count and
block, at batch 1 and 8. Synthetic Llama-2-7B bf16 shapes, random weights.

    python3 benchmarks/native_kernels.py [--gemv] [--attention] [--batches 1,8]

Each figure is one CUDA graph of 32 launches over 32 copies of the weights (as the 32 layers:
no copy stays in L2), replayed, median of 3 timings; GB/s counts the weights (or the KV) read.
Prints plain lines: what, tiling, microseconds a launch, GB/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from llmtop.engine.native import attention, gemv
from llmtop.engine.native.model import rms_norm

H, I, V, LAYERS = 4096, 11008, 32000, 32
DT = torch.bfloat16
EPS = 1e-5

# what the sweep tries (gemv.TILINGS is what a build times); splits for o and down
SWEEP = [gemv.Tiling(n, k, w, st) for n in (16, 32, 64) for k in (64, 128, 256) for w in (4, 8)
         for st in (3, 4)]


def timed(fn: Callable[[int], object], copies: int) -> float:
    """Microseconds a call: fn(i) for i over the copies, captured in one graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    for _ in range(3):
        graph.replay()
    runs = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        runs.append(a.elapsed_time(b) * 1e3 / 10 / copies)
    return statistics.median(runs)


def gemv_sweep(batches: list[int]) -> None:
    """Each matrix as the fused step runs it (fused.py): qkv plain, o and down as split-K
    parts added by add_norm (timed together), gate/up with the SwiGLU, the head into fp32."""
    shapes = {"qkv": (3 * H, H), "o": (H, H), "gate_up": (2 * I, H), "down": (H, I),
              "head": (V, H)}
    for name, (n, k) in shapes.items():
        copies = 4 if name == "head" else LAYERS
        ws = [torch.randn(n, k, dtype=DT, device="cuda") * 0.02 for _ in range(copies)]
        norm = torch.rand(H, dtype=DT, device="cuda") + 0.5
        nbytes = n * k * 2
        split = name in ("o", "down")
        for batch in batches:
            x = torch.randn(batch, k, dtype=DT, device="cuda")
            res = torch.randn(batch, H, dtype=DT, device="cuda")
            torch_ops = {
                "qkv": lambda i: F.linear(x, ws[i]),
                "o": lambda i: rms_norm(res + F.linear(x, ws[i]), norm, EPS),
                "gate_up": lambda i: (lambda g, u: F.silu(g) * u)(*F.linear(x, ws[i]).chunk(2, -1)),
                "down": lambda i: rms_norm(res + F.linear(x, ws[i]), norm, EPS),
                "head": lambda i: F.linear(x, ws[i]).float(),
            }[name]

            def ours(t: gemv.Tiling) -> Callable[[int], object]:
                if split:
                    return lambda i: gemv.add_norm(gemv.gemv(x, ws[i], t, partial=True), res,
                                                   norm, EPS)[1]
                return lambda i: gemv.gemv(x, ws[i], t, swiglu=name == "gate_up",
                                           out_dtype=torch.float32 if name == "head" else None)

            cands = [gemv.Tiling(t.block_n, t.block_k, t.warps, t.stages, sp) for t in SWEEP
                     for sp in ((1, 2, 4, 8) if split else (1,))]
            ref, got = torch_ops(0).float(), ours(cands[0])(0).float()
            err = ((got - ref).norm() / ref.norm()).item()
            cublas = timed(lambda i: F.linear(x, ws[i]), copies)
            torch_us = timed(torch_ops, copies)
            rows = []
            for t in cands:
                try:
                    rows.append((timed(ours(t), copies), t))
                except Exception as e:   # a tiling this card cannot compile (shared memory)
                    print(f"  {name} bs{batch} {t}: {type(e).__name__}", flush=True)
            rows.sort(key=lambda r: r[0])
            shipped = min((r for r in rows if gemv.Tiling(r[1].block_n, r[1].block_k,
                                                           r[1].warps, r[1].stages) in gemv.TILINGS
                           and r[1].splits in (gemv.SPLITS if split else (1,))),
                          key=lambda r: r[0])
            print(f"gemv {name:7} bs{batch} [{n}x{k}] rel err {err:.1e} | cuBLAS GEMV alone "
                  f"{cublas:5.1f} us {nbytes / cublas / 1e3:4.0f} GB/s | torch ops {torch_us:5.1f}"
                  f" us | ours best {rows[0][0]:5.1f} us {nbytes / rows[0][0] / 1e3:4.0f} GB/s "
                  f"({rows[0][1]}) | of the shipped candidates {shipped[0]:5.1f} us "
                  f"({shipped[1]})", flush=True)
            print("   top 6: " + "; ".join(f"{us:.1f} {t}" for us, t in rows[:6]), flush=True)
        del ws


def attention_sweep(batches: list[int]) -> None:
    kv_heads, dim, context, copies = 32, 128, 4096, 8
    configs = [(s, blk, w, st) for s in (8, 16, 32, 64) for blk in (16, 32, 64, 128)
               for w in (2, 4, 8) for st in (1, 3)]
    for batch in batches:
        ks = [torch.randn(batch, context, kv_heads, dim, dtype=DT, device="cuda")
              for _ in range(copies)]
        vs = [torch.randn_like(k) for k in ks]
        q = torch.randn(batch, kv_heads, dim, dtype=DT, device="cuda")
        lens = torch.zeros(batch, dtype=torch.long, device="cuda")
        totals: dict[tuple, float] = {}
        for length in (128, 2048, 4000):
            lens.fill_(length - 1)
            nbytes = 2 * batch * length * kv_heads * dim * 2
            ref = F.scaled_dot_product_attention(
                q[:, :, None], ks[0][:, :length].transpose(1, 2), vs[0][:, :length].transpose(1, 2))
            rows = []
            for cfg in configs:
                s, blk, w, st = cfg
                try:
                    out = attention.decode_attention(q, ks[0], vs[0], lens, None, 0, s, blk, w, st)
                    err = (out.view(batch, kv_heads, dim) - ref[:, :, 0]).abs().max().item()
                    us = timed(lambda i: attention.decode_attention(q, ks[i], vs[i], lens, None, 0,
                                                                    s, blk, w, st), copies)
                except Exception as e:
                    print(f"  attention {cfg}: {type(e).__name__}", flush=True)
                    continue
                rows.append((us, cfg, err))
                totals[cfg] = totals.get(cfg, 0.0) + us
            rows.sort()
            now = next(r for r in rows if r[1] == (8, 64, 4, 1))
            print(f"attention bs{batch} len {length}: session 7's (8, 64, 4, 1) {now[0]:.1f} us "
                  f"{nbytes / now[0] / 1e3:.0f} GB/s | best {rows[0][1]} {rows[0][0]:.1f} us "
                  f"{nbytes / rows[0][0] / 1e3:.0f} GB/s, max abs err {rows[0][2]:.1e} | top 5: "
                  + "; ".join(f"{r[1]} {r[0]:.1f}" for r in rows[:5]), flush=True)
        best = sorted(totals.items(), key=lambda kv: kv[1])[:5]
        print(f"attention bs{batch}: best over the three lengths (sum us): "
              + "; ".join(f"{c} {t:.1f}" for c, t in best)
              + f" | session 7's {totals.get((8, 64, 4, 1), float('nan')):.1f}", flush=True)
        del ks, vs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemv", action="store_true")
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("native_kernels: needs a CUDA device", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    print(torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
    if args.attention or not args.gemv:
        attention_sweep(batches)
    if args.gemv or not args.attention:
        gemv_sweep(batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
