"""Decode GEMVs on a CUDA device: one Triton kernel per weight matrix, its tiling measured on
this card when the step is built, and the residual add and RMSNorm between two GEMVs one small
kernel.

Why its own kernels: at batch 1-8 a decode step is the weights streamed once, so each GEMV
should run at the card's read bandwidth. Measured on an H200 (benchmarks/native_kernels.py,
7B shapes, batch 1): cuBLAS reads 2.5-3.9 TB/s, these 2.9-4.2; inductor's max-autotune came
close but picked the down projection's tiling from one noisy measurement (25.6 or 38.5 us
across builds). Two habits of the kernel:
- tensor cores (tl.dot, the batch padded to 16 rows): the products of a tile need no reduction
  across threads, so the loop is loads alone and software-pipelined (num_stages);
- split-K for the projections with few output rows (o: 4096 rows of 4096, down: 4096 of
  11008): 128 output blocks cannot fill 132 SMs, so each block's K range is cut into `splits`
  parts, written as fp32 partial sums; `add_norm` adds them in a fixed order (deterministic,
  no atomics) with the residual, and norms the sum for the next GEMV.
Fusing the norm into the GEMV's prologue was measured too and lost (qkv 25.6 -> 32.5 us: each
program's pass over the input row delays its first weight load).

Numerics follow the torch step (model.py): products summed in fp32, a GEMV's output rounded to
the weights' dtype before the SwiGLU or the residual add, the norm in fp32 rounded to the dtype.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .overlap import SERIAL, Overlap, wait_for_previous

T = TypeVar("T")


@triton.jit
def _gemv(x_ptr, w_ptr, out_ptr, B, N, K, PAIR, PER_SPLIT, stride_x, stride_o, stride_s,
          BP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          SWIGLU: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
    """out[b, n] = x[b] . w[n]. SWIGLU: w holds gate rows then up rows (PAIR = N below) and
    out = silu(gate) * up. SPLIT: program (i, s) sums k in [s * PER_SPLIT, (s + 1) * PER_SPLIT)
    into out[s] in fp32, unrounded."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    b = tl.arange(0, BP)
    live_n = n < N
    live_b = b < B
    dtype = w_ptr.dtype.element_ty
    k_start = tl.program_id(1) * PER_SPLIT
    k_end = tl.minimum(k_start + PER_SPLIT, K)
    wait_for_previous(PDL)
    acc = tl.zeros([BP, BLOCK_N], tl.float32)
    if SWIGLU:
        acc_up = tl.zeros([BP, BLOCK_N], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        live_k = k < k_end
        xk = tl.load(x_ptr + b[:, None] * stride_x + k[None, :],
                     mask=live_b[:, None] & live_k[None, :], other=0.0)
        at = n[:, None].to(tl.int64) * K + k[None, :]
        wk = tl.load(w_ptr + at, mask=live_n[:, None] & live_k[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(xk, tl.trans(wk), acc, input_precision="ieee")
        else:
            acc = tl.dot(xk, tl.trans(wk), acc)
        if SWIGLU:
            wu = tl.load(w_ptr + at + PAIR * K, mask=live_n[:, None] & live_k[None, :], other=0.0)
            if IEEE:
                acc_up = tl.dot(xk, tl.trans(wu), acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(xk, tl.trans(wu), acc_up)
    out_at = b[:, None] * stride_o + n[None, :]
    live = live_b[:, None] & live_n[None, :]
    if SPLIT:
        tl.store(out_ptr + tl.program_id(1) * stride_s + out_at, acc, mask=live)
    else:
        y = acc.to(dtype)
        if SWIGLU:
            gate = y.to(tl.float32)
            y = (gate / (1.0 + tl.exp(-gate))).to(dtype) * acc_up.to(dtype)
        tl.store(out_ptr + out_at, y.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _add_norm(parts_ptr, x_ptr, w_ptr, x_out_ptr, h_ptr, N, stride_s, eps,
              BLOCK: tl.constexpr, SPLITS: tl.constexpr, HAS_PARTS: tl.constexpr,
              PDL: tl.constexpr):
    """Row b: x = x + round(sum of the parts) (the GEMV's output, then the residual add) and
    h = w * round(x * rsqrt(mean(x^2) + eps)), as model.rms_norm."""
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    live = i < N
    dtype = x_ptr.dtype.element_ty
    norm_w = tl.load(w_ptr + i, mask=live, other=0.0)      # a weight: no need to wait for it
    wait_for_previous(PDL)
    x = tl.load(x_ptr + b * N + i, mask=live, other=0.0)
    if HAS_PARTS:
        total = tl.zeros([BLOCK], tl.float32)
        for s in tl.static_range(SPLITS):    # unrolled: the parts' loads go out together
            total += tl.load(parts_ptr + s * stride_s + b * N + i, mask=live, other=0.0)
        x = x + total.to(dtype)
        tl.store(x_out_ptr + b * N + i, x, mask=live)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / N + eps)
    h = norm_w * (xf * rstd).to(dtype)
    tl.store(h_ptr + b * N + i, h, mask=live)


@dataclass(frozen=True)
class Tiling:
    block_n: int
    block_k: int
    warps: int
    stages: int
    splits: int = 1

    def __str__(self) -> str:
        return (f"{self.block_n}x{self.block_k} w{self.warps} s{self.stages}"
                + (f" k/{self.splits}" if self.splits > 1 else ""))


# what a build times (the best of the sweep in benchmarks/native_kernels.py on an H200, 7B
# shapes, batch 1 and 8: each within 10 % of the best for some matrix)
TILINGS = [Tiling(32, 128, 4, 4), Tiling(32, 256, 4, 3), Tiling(64, 128, 4, 3),
           Tiling(32, 256, 4, 4), Tiling(64, 256, 4, 4), Tiling(64, 128, 4, 4)]
SPLITS = (1, 2, 4)


def gemv(x: torch.Tensor, w: torch.Tensor, tiling: Tiling, *, swiglu: bool = False,
         partial: bool = False, out_dtype: torch.dtype | None = None,
         overlap: Overlap = SERIAL) -> torch.Tensor:
    """x [B, K] (rows may be strided); w [N, K] (or [2 N, K] with swiglu): out [B, N]. With
    `partial`, the fp32 sums [tiling.splits, B, N] of each part of K, unrounded: add_norm adds
    them up."""
    batch, k = x.shape
    n = w.shape[0] // 2 if swiglu else w.shape[0]
    if partial:
        out = torch.empty(tiling.splits, batch, n, dtype=torch.float32, device=x.device)
    else:
        out = torch.empty(batch, n, dtype=out_dtype or w.dtype, device=x.device)
    splits = tiling.splits if partial else 1
    per = triton.cdiv(triton.cdiv(k, splits), tiling.block_k) * tiling.block_k
    _gemv[(triton.cdiv(n, tiling.block_n), splits)](
        x, w, out, batch, n, k, n, per, x.stride(0), out.stride(-2),
        out.stride(0) if partial else 0, BP=max(16, triton.next_power_of_2(batch)),
        BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k, SWIGLU=swiglu, SPLIT=partial,
        IEEE=w.dtype == torch.float32, num_warps=tiling.warps, num_stages=tiling.stages,
        **overlap.launch())
    return out


def add_norm(parts: torch.Tensor | None, x: torch.Tensor, w: torch.Tensor,
             eps: float, overlap: Overlap = SERIAL) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + the parts' sum, its RMSNorm); parts None: x itself is normed (the first layer)."""
    batch, n = x.shape
    x_out = torch.empty_like(x) if parts is not None else x
    h = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _add_norm[(batch,)](parts if parts is not None else x, x, w, x_out, h, n,
                        parts.stride(0) if parts is not None else 0, eps, BLOCK=block,
                        SPLITS=parts.shape[0] if parts is not None else 0,
                        HAS_PARTS=parts is not None, num_warps=8 if block >= 2048 else 4,
                        **overlap.launch())
    return x_out, h


def fastest(run: Callable[[T], Callable[[int], object]], copies: int,
            candidates: list[T]) -> tuple[T, float]:
    """The candidate whose `run(candidate)(i)` for i over the copies (each layer's weights),
    captured in one CUDA graph, has the lowest median of 5 timings; (candidate, us a call).
    A candidate that does not fit the card (shared memory) is skipped."""
    best: tuple[T, float] | None = None
    for cand in candidates:
        fn = run(cand)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):      # compiles it, outside the capture
                for i in range(copies):
                    fn(i)
        except OutOfResources:   # a tiling too big for this card's shared memory (fp32 weights)
            continue
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(copies):
                fn(i)
        graph.replay()
        times = []
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / copies)
        us = statistics.median(times)
        del graph
        if best is None or us < best[1]:
            best = (cand, us)
    if best is None:
        raise OutOfResources(0, 0, "every candidate tiling")
    return best
