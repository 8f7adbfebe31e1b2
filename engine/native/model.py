"""A compact Llama forward for decode speed, over weights taken from the loaded transformers model.

Why its own forward: through transformers' generic paths a decode step is mostly host work
(cache objects, mask builders, hooks). Here one step is a fixed sequence of kernels over
preallocated buffers, so it can be captured once in a CUDA graph (graphs.py) and replayed.

The weights are the loaded model's: q/k/v and gate/up are fused into one matrix each (one GEMV
instead of three or two) and the transformers modules are re-pointed at views of the fused
matrix, so the device holds one copy. The numerics follow transformers' Llama step by step
(RMSNorm in fp32, rotary tables from the model's own rotary module, so Llama-3 and linear rope
scaling come for free), which is why greedy ids match the hf backend's in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..catalogue import OptionError

# rope types whose frequencies change with the sequence length: a fixed table cannot hold them
DYNAMIC_ROPE = ("dynamic", "longrope")


class NativeUnsupported(OptionError):
    """A model or setting backend=native cannot run; the message is one line (an OptionError,
    so the engine reports it as a configuration error, like any option that cannot run)."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int        # this rank's query heads
    kv_heads: int     # this rank's KV heads
    head_dim: int
    vocab: int
    eps: float
    context: int


@dataclass
class Layer:
    attn_norm: torch.Tensor
    wqkv: torch.Tensor   # [(heads + 2 kv_heads) * head_dim, hidden]
    wo: torch.Tensor     # [hidden, heads * head_dim]
    mlp_norm: torch.Tensor
    w13: torch.Tensor    # [2 * intermediate, hidden]: gate rows, then up rows
    w2: torch.Tensor     # [hidden, intermediate]


def check(model: Any) -> None:
    """Refuses (one line) what this forward does not compute."""
    cfg = model.config
    if getattr(cfg, "model_type", "") != "llama":
        raise NativeUnsupported(f"backend=native runs Llama-architecture models; this one is "
                                f"{getattr(cfg, 'model_type', '?')!r}: use backend=hf")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise NativeUnsupported(f"backend=native computes SwiGLU; this model's MLP uses "
                                f"{cfg.hidden_act}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise NativeUnsupported("backend=native has no projection biases; this model has them")
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope in DYNAMIC_ROPE:
        raise NativeUnsupported(f"backend=native uses a fixed rotary table; rope type {rope!r} "
                                "changes it with the sequence length")


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (transformers' tensor-parallel load), or the tensor itself, as
    a plain tensor (detached: the compiled pieces then see inputs, not per-layer parameters)."""
    return (t.to_local() if hasattr(t, "to_local") else t).detach()


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def _repoint(modules: list[nn.Module], fused: torch.Tensor) -> None:
    """Make each module's weight a view of `fused`, so the originals are freed (one copy)."""
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[start:start + rows], requires_grad=False)
        start += rows


def take_layers(model: Any,
                shard: Callable[[str, torch.Tensor], torch.Tensor] | None) -> list[Layer]:
    """The decoder layers' weights, fused; `shard(kind, w)` slices a rank's part (tp.py).

    Without `shard` (one rank, or a transformers TP load whose DTensors are already this
    rank's slices) the transformers modules are re-pointed at the fused matrices.
    """
    layers = []
    for block in model.model.layers:
        att, mlp = block.self_attn, block.mlp
        qkv_mods = [att.q_proj, att.k_proj, att.v_proj]
        mlp_mods = [mlp.gate_proj, mlp.up_proj]
        if shard is None:
            with torch.no_grad():
                wqkv = torch.cat([local(m.weight) for m in qkv_mods])
                w13 = torch.cat([local(m.weight) for m in mlp_mods])
            if not hasattr(att.q_proj.weight, "to_local"):
                _repoint(qkv_mods, wqkv)
                _repoint(mlp_mods, w13)
            wo, w2 = local(att.o_proj.weight), local(mlp.down_proj.weight)
        else:
            wqkv = torch.cat([shard(kind, m.weight) for kind, m in zip("qkv", qkv_mods)])
            w13 = torch.cat([shard("col", m.weight) for m in mlp_mods])
            wo, w2 = shard("row", att.o_proj.weight), shard("row", mlp.down_proj.weight)
        layers.append(Layer(full(block.input_layernorm.weight), wqkv, wo,
                            full(block.post_attention_layernorm.weight), w13, w2))
    return layers


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, transformers' rotate-half layout. x [N, T, H, D], cos/sin [N, T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attn_in(x: torch.Tensor, norm: torch.Tensor, wqkv: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, pos: torch.Tensor, s: Shape, k_cache: torch.Tensor,
            v_cache: torch.Tensor,
            at: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Norm, fused q/k/v projection, rotary at positions pos [N, T], and k, v stored in the
    cache at the index pair `at` (kv.py's `targets`, one entry per token); q, k, v [N, T, ., D].

    This and the two functions below are pure apart from that store (weights and cache are
    arguments): one compiled version serves every layer, the store fuses into the rotary
    kernel, and the attention between them (whose KV span varies) stays outside.
    """
    n, t, _ = x.shape
    h = rms_norm(x, norm, s.eps)
    q, k, v = F.linear(h, wqkv).split(
        [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
    c, si = cos[pos].unsqueeze(2), sin[pos].unsqueeze(2)
    q = rotate(q.view(n, t, s.heads, s.head_dim), c, si)
    k = rotate(k.view(n, t, s.kv_heads, s.head_dim), c, si)
    v = v.view(n, t, s.kv_heads, s.head_dim)
    k_cache[at] = k.flatten(0, 1)
    v_cache[at] = v.flatten(0, 1)
    return q, k, v


def attn_out_mlp(x: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, norm: torch.Tensor,
                 w13: torch.Tensor, w2: torch.Tensor, eps: float,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Output projection and residual, then the SwiGLU MLP and residual (x [N, T, hidden];
    o: the attention's output, any layout whose elements are [N, T, heads * D] in order)."""
    a = F.linear(o.reshape(x.shape[0], x.shape[1], -1), wo)
    x = x + (reduce(a) if reduce is not None else a)
    gate, up = F.linear(rms_norm(x, norm, eps), w13).chunk(2, dim=-1)
    m = F.linear(F.silu(gate) * up, w2)
    return x + (reduce(m) if reduce is not None else m)


def head(x: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float) -> torch.Tensor:
    return F.linear(rms_norm(x, norm, eps), lm_head).float()


@dataclass
class Pieces:
    """The pure pieces of a step: eager here, compiled by graphs.py for compile=full."""
    attn_in: Callable[..., tuple[torch.Tensor, ...]] = attn_in
    attn_out_mlp: Callable[..., torch.Tensor] = attn_out_mlp
    head: Callable[..., torch.Tensor] = head


EAGER = Pieces()


class NativeLlama:
    """The forward. Attention reads and writes go through a KV cache object (kv.py)."""

    def __init__(self, model: Any, tp_rank: int = 0, tp_world: int = 1,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shard: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
        check(model)
        cfg = model.config
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.shape = Shape(cfg.num_hidden_layers, cfg.hidden_size, heads // tp_world,
                           kv_heads // tp_world, head_dim, cfg.vocab_size, cfg.rms_norm_eps,
                           cfg.max_position_embeddings)
        self.all_reduce = all_reduce
        self.layers = take_layers(model, shard)
        self.embed = full(model.model.embed_tokens.weight)
        self.norm = full(model.model.norm.weight)
        self.lm_head = full(model.lm_head.weight)   # the embedding itself when tied
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        rotary = model.model.rotary_emb
        positions = torch.arange(self.shape.context, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * rotary.inv_freq.to(self.device, torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rotary.attention_scaling).to(self.dtype)
        self.sin = (emb.sin() * rotary.attention_scaling).to(self.dtype)
        # decode attention: attention.py's Triton kernel over the cache in place on CUDA (it
        # tiles head_dim in powers of two); SDPA over a span of the cache elsewhere
        self.decode_attention = None
        if self.device.type == "cuda" and head_dim & (head_dim - 1) == 0:
            from .attention import decode_attention
            self.decode_attention = decode_attention

    def weight_bytes(self) -> int:
        """Bytes one decode step reads from the weights (this rank's), embedding row aside."""
        ts = [self.norm, self.lm_head]
        for lay in self.layers:
            ts += [lay.attn_norm, lay.wqkv, lay.wo, lay.mlp_norm, lay.w13, lay.w2]
        return sum(t.numel() * t.element_size() for t in ts)

    def prefill(self, ids: torch.Tensor, row: int, cache: Any,
                attend: Callable[..., torch.Tensor], fns: Pieces = EAGER) -> torch.Tensor:
        """One request's prompt ids [1, T] into cache row `row` from slot 0; last logits [1, V].

        Rows are prefilled one by one and unpadded, so attention is plain causal and every
        pinned SDPA backend (flash has no arbitrary masks) and flex can run it. `fns`: the
        pieces (benchmarks/native_decode.py --prefill times them compiled against eager).
        """
        s = self.shape
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device).unsqueeze(0)
        at = cache.targets(torch.full((t,), row, device=ids.device), pos[0])
        x = F.embedding(ids, self.embed)
        for i, lay in enumerate(self.layers):
            q, k, v = fns.attn_in(x, lay.attn_norm, lay.wqkv, self.cos, self.sin, pos, s,
                                  cache.k[i], cache.v[i], at)
            o = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = fns.attn_out_mlp(x, o.transpose(1, 2), lay.wo, lay.mlp_norm, lay.w13, lay.w2,
                                 s.eps, self.all_reduce)
        return fns.head(x[:, -1], self.norm, self.lm_head, s.eps)

    def decode(self, ids: torch.Tensor, lens: torch.Tensor, cache: Any, span: int,
               fns: Pieces = EAGER) -> torch.Tensor:
        """One token per row: ids [B, 1] at slot lens[b] of row b; logits [B, V]; lens += 1.

        With the kernel (CUDA) each row attends to its own slots 0 .. lens[b], read in place
        through the cache's block table, so `span` does not reach it and one captured graph
        serves every length. With SDPA attention reads the first `span` slots of each row (a
        fixed shape) under a mask; grouped heads attend as a block of queries per KV head, so
        GQA needs no repeated K/V.
        """
        s = self.shape
        b = ids.shape[0]
        pos = lens[:, None]
        at = cache.targets(torch.arange(b, device=ids.device), lens)   # once for all layers
        x = F.embedding(ids, self.embed)
        if self.decode_attention is not None:
            table, page = cache.blocks()
            for i, lay in enumerate(self.layers):
                q = fns.attn_in(x, lay.attn_norm, lay.wqkv, self.cos, self.sin, pos, s,
                                cache.k[i], cache.v[i], at)[0]
                o = self.decode_attention(q.reshape(b, s.heads, s.head_dim), cache.k[i],
                                          cache.v[i], lens, table, page)
                x = fns.attn_out_mlp(x, o, lay.wo, lay.mlp_norm, lay.w13, lay.w2, s.eps,
                                     self.all_reduce)
        else:
            group = s.heads // s.kv_heads
            mask = (torch.arange(span, device=ids.device)[None, :] <= lens[:, None])[:, None, None]
            pages = cache.pages(b, span)
            for i, lay in enumerate(self.layers):
                q = fns.attn_in(x, lay.attn_norm, lay.wqkv, self.cos, self.sin, pos, s,
                                cache.k[i], cache.v[i], at)[0]
                keys, values = cache.read(i, b, span, pages)       # [B, kv_heads, span, D]
                o = F.scaled_dot_product_attention(q.view(b, s.kv_heads, group, s.head_dim),
                                                   keys, values, attn_mask=mask)
                x = fns.attn_out_mlp(x, o, lay.wo, lay.mlp_norm, lay.w13, lay.w2, s.eps,
                                     self.all_reduce)
        lens.add_(1)
        return fns.head(x[:, 0], self.norm, self.lm_head, s.eps)
