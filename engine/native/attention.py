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
def _rotate(x_ptr, d, partner, sign, c, sn, MASK):
    """One rotate-half rotary of the rows at x_ptr (x_ptr + d, the columns), in fp32, rounded
    to the input's dtype: the same sums as model.rotate."""
    a = tl.load(x_ptr + d, mask=MASK, other=0.0)
    b = tl.load(x_ptr + partner, mask=MASK, other=0.0)
    return (a.to(tl.float32) * c + sign * b.to(tl.float32) * sn).to(a.dtype)


@triton.jit
def _decode_parts(q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, o_ptr, lse_ptr, cos_ptr, sin_ptr,
                  stride_qb, stride_qh, stride_kx, stride_ks, stride_tb, scale,
                  KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK: tl.constexpr, DOT: tl.constexpr,
                  PDL: tl.constexpr, ROPE: tl.constexpr):
    """ROPE: q_ptr is the q/k/v GEMV's output (a row: q heads, k heads, v heads); the program
    rotates its q heads, and the one whose part holds the new slot rotates the new key and
    stores it and the new value into the caches before it reads them."""
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    # lens and the table change only between steps: read before the wait for the kernel before
    length = tl.load(lens_ptr + row) + 1            # slots 0 .. lens[row]: the new one included
    per = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK) * BLOCK
    start = part * per
    end = tl.minimum(start + per, length)
    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + g
    live = g < GROUP
    wait_for_previous(PDL)
    if ROPE:
        pos = length - 1
        partner = (d + HEAD_DIM // 2) % HEAD_DIM
        sign = tl.where(d < HEAD_DIM // 2, -1.0, 1.0)
        c = tl.load(cos_ptr + pos * HEAD_DIM + d).to(tl.float32)
        sn = tl.load(sin_ptr + pos * HEAD_DIM + d).to(tl.float32)
        src = q_ptr + row * stride_qb
        q = _rotate(src + heads[:, None] * HEAD_DIM, d[None, :], partner[None, :], sign[None, :],
                    c[None, :], sn[None, :], live[:, None])
        if (pos >= start) & (pos < end):
            if PAGED:
                page = tl.load(table_ptr + row * stride_tb + pos // PAGE)
                slot = page.to(tl.int64) * stride_kx + (pos % PAGE) * stride_ks
            else:
                slot = row.to(tl.int64) * stride_kx + pos * stride_ks
            k_new = _rotate(src + (KV_HEADS * GROUP + kv_head) * HEAD_DIM, d, partner, sign, c,
                            sn, d < HEAD_DIM)
            v_new = tl.load(src + (KV_HEADS * GROUP + KV_HEADS + kv_head) * HEAD_DIM + d)
            tl.store(k_ptr + slot + kv_head * HEAD_DIM + d, k_new)
            tl.store(v_ptr + slot + kv_head * HEAD_DIM + d, v_new)
            tl.debug_barrier()                       # the stores visible to the loads below
    else:
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
        v = tl.load(v_ptr + at, mask=inside[:, None], other=0.0)   # in flight with k's
        if DOT:
            s = tl.dot(q, tl.trans(k)) * scale                        # [GROUP_P2, BLOCK]
        else:
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], 2)
        s = tl.where(inside[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
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


Rotary = tuple[torch.Tensor, torch.Tensor]   # the model's cos and sin tables [positions, D]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lens: torch.Tensor, table: torch.Tensor | None, page: int,
                     splits: int = NSPLIT, block: int | None = None, warps: int = 4,
                     stages: int = 1, overlap: Overlap = SERIAL,
                     rope: Rotary | None = None) -> torch.Tensor:
    """q [B, H, D] (one new token per row, rotated); the caches [rows or pages, slots, KV
    heads, D]; row b attends to its slots 0 .. lens[b]. Returns [B, 1, H * D] in q's dtype.
    With `rope`, q is the q/k/v GEMV's output [B, (H + 2 KV) * D], unrotated: the kernel
    rotates q and the new key and stores the new key and value at slot lens[b] itself."""
    parts, lse = decode_parts(q, k_cache, v_cache, lens, table, page, splits, block, warps,
                              stages, overlap, rope)
    b, heads = parts.shape[:2]
    out = torch.empty(b, 1, heads * parts.shape[3], dtype=q.dtype, device=q.device)
    _merge_parts[(b * heads,)](parts, lse, out, SPLITS=splits, HEAD_DIM=parts.shape[3],
                               num_warps=1, **overlap.launch())
    return out


def decode_parts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 lens: torch.Tensor, table: torch.Tensor | None, page: int,
                 splits: int = NSPLIT, block: int | None = None, warps: int = 4,
                 stages: int = 1, overlap: Overlap = SERIAL,
                 rope: Rotary | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As decode_attention, without the merge: the parts [B, H, splits, D] and their
    log-sum-exps [B, H, splits] (fp32)."""
    kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
    if rope is None:
        q = q.contiguous()                  # the kernel steps over D with stride 1
        b, heads, _ = q.shape
        stride_qh = q.stride(1)
    else:
        b, heads, stride_qh = q.shape[0], q.shape[1] // dim - 2 * kv_heads, dim
        assert q.stride(1) == 1
    group = heads // kv_heads
    parts = torch.empty(b, heads, splits, dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, heads, splits, dtype=torch.float32, device=q.device)
    dot = q.dtype in (torch.bfloat16, torch.float16)
    g2 = max(16, triton.next_power_of_2(group)) if dot else triton.next_power_of_2(group)
    block = block or (64 if dot else max(16, 64 // g2))
    cos, sin = rope if rope is not None else (lens, lens)
    _decode_parts[(b, kv_heads, splits)](
        q, k_cache, v_cache, lens, table if table is not None else lens, parts, lse, cos, sin,
        q.stride(0), stride_qh, k_cache.stride(0), k_cache.stride(1),
        table.stride(0) if table is not None else 0, 1.0 / math.sqrt(dim),
        KV_HEADS=kv_heads, GROUP=group, GROUP_P2=g2, HEAD_DIM=dim, PAGE=page,
        PAGED=table is not None, SPLITS=splits, BLOCK=block, DOT=dot, num_warps=warps,
        num_stages=stages, ROPE=rope is not None, **overlap.launch())
    return parts, lse
