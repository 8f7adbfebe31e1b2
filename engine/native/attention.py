"""Decode attention on a CUDA device: one Triton kernel that reads the KV cache where it lies.

Why its own kernel: SDPA needs the keys as one tensor of a fixed span, so a paged cache had to
be gathered into a copy first (the copy cost +20 % per step at a 2048-token prompt, 6x at
batch 8), and a static one was read over a whole span bucket with a mask, with a mask fill and
a layout copy per layer around cuDNN's kernel. Here each program reads a row's slots through
the block table (kv=paged) or straight from its row (kv=static), up to the row's own length
read from `lens` on the device, so one captured graph serves every length.

The sequence is split among `splits` programs per KV head (flash-decoding): at batch 1 a 7B
has 32 KV heads, too few programs to stream a long cache at full bandwidth. Each program writes
its part's normalized output and log-sum-exp, and a second small kernel weighs the parts by
their softmax mass into the output (one launch: written in PyTorch, inductor made two of it,
and each launch in a captured step costs its own gap). The grouped query heads of one KV head
are one block of queries, so GQA reads each key once. With a 16-bit cache the products are
tensor-core dots (the block of queries padded to 16 rows): the sums over a block then need no
reduction across threads, which had held a 2048-token row at 1.3-1.6 TB/s on an H200. fp32
caches are summed in fp32 without tensor cores, so fp32 models get fp32 attention (greedy ids
match the SDPA path's).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .overlap import SERIAL, Overlap, wait_for_previous

NSPLIT = 16  # parts per (row, KV head) where the step is not tuned (fused.py tunes its own)


@triton.jit
def _decode_parts(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr, lse_ptr,
                  stride_qb, stride_qh, stride_kx, stride_ks, stride_tb, scale,
                  KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK: tl.constexpr, DOT: tl.constexpr,
                  PDL: tl.constexpr):
    wait_for_previous(PDL)
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    length = tl.load(lens_ptr + row) + 1            # slots 0 .. lens[row]: the new one included
    per = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK) * BLOCK
    start = part * per
    end = tl.minimum(start + per, length)
    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + g
    live = g < GROUP
    q = tl.load(q_ptr + row * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=live[:, None], other=0.0)
    if not DOT:
        q = q.to(tl.float32) * scale
    m = tl.full([GROUP_P2], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, HEAD_DIM], tl.float32)
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        inside = n < end
        if PAGED:
            page = tl.load(table_ptr + row * stride_tb + n // PAGE, mask=inside, other=0)
            base = page.to(tl.int64) * stride_kx + (n % PAGE) * stride_ks
        else:
            base = row.to(tl.int64) * stride_kx + n * stride_ks
        at = base[:, None] + kv_head * HEAD_DIM + d[None, :]
        k = tl.load(k_ptr + at, mask=inside[:, None], other=0.0)
        if DOT:
            s = tl.dot(q, tl.trans(k)) * scale                        # [GROUP_P2, BLOCK]
        else:
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], 2)
        s = tl.where(inside[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + at, mask=inside[:, None], other=0.0)
        if DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        else:
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
        total = total * alpha + tl.sum(p, 1)
        m = m_new
    seen = total > 0                                 # an empty part (past the row's length)
    out = tl.where(seen[:, None], acc / tl.where(seen, total, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    at_part = (row * KV_HEADS * GROUP + heads) * SPLITS + part       # [row, head, part]
    tl.store(o_ptr + at_part[:, None] * HEAD_DIM + d[None, :], out, mask=live[:, None])
    tl.store(lse_ptr + at_part, lse, mask=live)


@triton.jit
def _merge_parts(parts_ptr, lse_ptr, o_ptr, SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr,
                 PDL: tl.constexpr):
    wait_for_previous(PDL)
    at = tl.program_id(0)                           # row * heads + head
    part = tl.arange(0, SPLITS)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(lse_ptr + at * SPLITS + part)
    w = tl.exp(lse - tl.max(lse, 0))                # part 0 is never empty; -inf weighs 0
    w = w / tl.sum(w, 0)
    parts = tl.load(parts_ptr + (at * SPLITS + part)[:, None] * HEAD_DIM + d[None, :])
    out = tl.sum(parts * w[:, None], 0)
    tl.store(o_ptr + at * HEAD_DIM + d, out.to(o_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lens: torch.Tensor, table: torch.Tensor | None, page: int,
                     splits: int = NSPLIT, block: int | None = None, warps: int = 4,
                     stages: int = 1, overlap: Overlap = SERIAL) -> torch.Tensor:
    """q [B, H, D] (one new token per row, rotated); the caches [rows or pages, slots, KV
    heads, D]; row b attends to its slots 0 .. lens[b]. Returns [B, 1, H * D] in q's dtype."""
    parts, lse = decode_parts(q, k_cache, v_cache, lens, table, page, splits, block, warps,
                              stages, overlap)
    b, heads, dim = q.shape
    out = torch.empty(b, 1, heads * dim, dtype=q.dtype, device=q.device)
    _merge_parts[(b * heads,)](parts, lse, out, SPLITS=splits, HEAD_DIM=dim, num_warps=1,
                               **overlap.launch())
    return out


def decode_parts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 lens: torch.Tensor, table: torch.Tensor | None, page: int,
                 splits: int = NSPLIT, block: int | None = None, warps: int = 4,
                 stages: int = 1, overlap: Overlap = SERIAL) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, D] (one new token per row, rotated); the caches [rows or pages, slots, KV
    heads, D]; row b attends to its slots 0 .. lens[b]. Returns the parts [B, H, splits, D]
    and their log-sum-exps [B, H, splits] (fp32), which decode_attention merges."""
    q = q.contiguous()                      # the kernel steps over D with stride 1
    b, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    parts = torch.empty(b, heads, splits, dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, heads, splits, dtype=torch.float32, device=q.device)
    dot = q.dtype in (torch.bfloat16, torch.float16)
    g2 = max(16, triton.next_power_of_2(group)) if dot else triton.next_power_of_2(group)
    block = block or (64 if dot else max(16, 64 // g2))
    _decode_parts[(b, kv_heads, splits)](
        q, k_cache, v_cache, lens, table if table is not None else lens, parts, lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        table.stride(0) if table is not None else 0, 1.0 / math.sqrt(dim),
        KV_HEADS=kv_heads, GROUP=group, GROUP_P2=g2, HEAD_DIM=dim, PAGE=page,
        PAGED=table is not None, SPLITS=splits, BLOCK=block, DOT=dot, num_warps=warps,
        num_stages=stages, **overlap.launch())
    return parts, lse

