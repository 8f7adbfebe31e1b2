"""The decode step of compile=full on one CUDA device: eight kernels a layer, each tuned on this
card when the step is built, captured by graphs.py.

A layer: q/k/v GEMV; the decode attention kernel, which rotates q and the new key and stores
the new key and value itself, and its merge (attention.py); the o GEMV as split-K partial
sums; their sum + the residual + the MLP's RMSNorm (gemv.add_norm); gate/up GEMV with the
SwiGLU as its epilogue; the down GEMV as partial sums, added up with the residual by the next
layer's norm. The inductor-compiled step
(graphs.compiled) had ~10.3 kernels a layer with the down projection's tiling left to one
noisy measurement; the measured choice here is the median of five timings over the model's
own 32 layers of weights, and the choice is in the compile event's text.

The kernels are launched with programmatic dependent launch where the card has it
(overlap.py): each one's programs are placed while the kernel before finishes.

Tensor parallelism keeps the compiled step: its all-reduce sits between a GEMV and the residual
add, where these kernels add split-K parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import triton

from .attention import decode_attention
from .gemv import SPLITS, TILINGS, Tiling, add_norm, fastest, gemv
from .model import NativeLlama
from .overlap import Overlap

ATTENTION = [(s, b) for s in (8, 16, 32, 64) for b in (32, 64)]   # (splits, block)
TUNE_LENGTH = 2048   # the KV length attention is timed at (the cache's context if shorter)


@dataclass(frozen=True)
class Plan:
    """The tilings one batch size runs with."""
    qkv: Tiling
    o: Tiling
    gate_up: Tiling
    down: Tiling
    head: Tiling
    attention: tuple[int, int]     # (splits, block)

    def __str__(self) -> str:
        return (f"qkv {self.qkv}, o {self.o}, gate/up {self.gate_up}, down {self.down}, "
                f"head {self.head}, attention {self.attention[0]} splits x {self.attention[1]}")


class FusedDecode:
    """`step(ids, lens)` = NativeLlama.decode over this module's kernels (tune first)."""

    def __init__(self, model: NativeLlama, cache: Any, overlap: Overlap) -> None:
        self.model, self.cache, self.overlap = model, cache, overlap
        self.plans: dict[int, Plan] = {}

    def tune(self, batch: int) -> Plan:
        """Times each candidate over the model's layers at this batch size; keeps the fastest."""
        m, s, ov = self.model, self.model.shape, self.overlap
        layers = m.layers
        n = len(layers)
        dev, dt = m.device, m.dtype
        x = torch.randn(batch, s.hidden, dtype=dt, device=dev)
        o_in = torch.randn(batch, s.heads * s.head_dim, dtype=dt, device=dev)
        mlp_in = torch.randn(batch, layers[0].w2.shape[1], dtype=dt, device=dev)
        split = [Tiling(t.block_n, t.block_k, t.warps, t.stages, k) for t in TILINGS
                 for k in SPLITS]
        qkv = fastest(lambda t: lambda i: gemv(x, layers[i].wqkv, t, overlap=ov), n, TILINGS)[0]
        # o and down with the add_norm that sums their parts: more parts, more to add
        o = fastest(lambda t: lambda i: add_norm(
            gemv(o_in, layers[i].wo, t, partial=True, overlap=ov), x, layers[i].mlp_norm, s.eps,
            ov), n, split)[0]
        gate_up = fastest(lambda t: lambda i: gemv(x, layers[i].w13, t, swiglu=True, overlap=ov),
                          n, TILINGS)[0]
        down = fastest(lambda t: lambda i: add_norm(
            gemv(mlp_in, layers[i].w2, t, partial=True, overlap=ov), x, layers[i].attn_norm,
            s.eps, ov), n, split)[0]
        head = fastest(lambda t: lambda i: gemv(x, m.lm_head, t, out_dtype=torch.float32,
                                                overlap=ov), 1, TILINGS)[0]
        qkv_out = torch.randn(batch, (s.heads + 2 * s.kv_heads) * s.head_dim, dtype=dt,
                              device=dev)
        length = min(TUNE_LENGTH, self.cache.context)
        lens = torch.full((batch,), length - 1, device=dev)
        table, page = self.cache.blocks()
        if table is not None:     # distinct pages for every row, for the timing only
            saved = table.clone()
            per_row = triton.cdiv(length, page)
            pages = torch.arange(batch * per_row, device=dev) % (self.cache.n_pages - 1) + 1
            table[:batch, :per_row] = pages.view(batch, per_row)
        attention = fastest(lambda a: lambda i: decode_attention(
            qkv_out, self.cache.k[i], self.cache.v[i], lens, table, page, *a, overlap=ov,
            rope=(m.cos, m.sin)), n, ATTENTION)[0]
        if table is not None:
            table.copy_(saved)
        plan = Plan(qkv, o, gate_up, down, head, attention)
        self.plans[batch] = plan
        return plan

    def step(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """One token per row: ids [B, 1] at slot lens[b] of row b; logits [B, V]; lens += 1."""
        m, s, cache, ov = self.model, self.model.shape, self.cache, self.overlap
        b = ids.shape[0]
        plan = self.plans[b]
        table, page = cache.blocks()
        x, h = add_norm(None, F.embedding(ids[:, 0], m.embed), m.layers[0].attn_norm, s.eps, ov)
        for i, lay in enumerate(m.layers):
            qkv = gemv(h, lay.wqkv, plan.qkv, overlap=ov)
            o = decode_attention(qkv, cache.k[i], cache.v[i], lens, table, page,
                                 *plan.attention, overlap=ov, rope=(m.cos, m.sin))
            parts = gemv(o.view(b, -1), lay.wo, plan.o, partial=True, overlap=ov)
            x, h = add_norm(parts, x, lay.mlp_norm, s.eps, ov)
            parts = gemv(gemv(h, lay.w13, plan.gate_up, swiglu=True, overlap=ov), lay.w2,
                         plan.down, partial=True, overlap=ov)
            after = m.layers[i + 1].attn_norm if i + 1 < len(m.layers) else m.norm
            x, h = add_norm(parts, x, after, s.eps, ov)
        lens.add_(1)
        return gemv(h, m.lm_head, plan.head, out_dtype=torch.float32, overlap=ov)
