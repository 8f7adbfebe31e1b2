"""Tensor parallelism for backend=native: Megatron-style sharding over torch.distributed.

q/k/v and gate/up are split by output rows (columns of the math: each rank computes whole
heads and a slice of the MLP), o and down by input columns, so each layer needs one sum after
attention and one after the MLP. The sums are functional collectives: they return a new
tensor instead of mutating through a work handle, so they trace and capture like any op.
Embedding, norms and the LM head stay whole on every rank (their cost is one row or one GEMV).
"""

from __future__ import annotations

from typing import Callable

import torch

from .model import NativeUnsupported


def check_divides(heads: int, kv_heads: int, world: int) -> None:
    if heads % world or kv_heads % world:
        raise NativeUnsupported(f"--tp {world} must divide the {heads} attention heads and "
                                f"{kv_heads} KV heads (backend=native shards whole heads)")


def sharder(rank: int, world: int, heads: int, kv_heads: int,
            head_dim: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """`shard(kind, weight)`: this rank's slice of a full weight (kind q, k, v, col or row).

    The slice is copied out (contiguous for the GEMV) and the full weight is left to the
    caller: a model loaded whole per rank is a CPU / test layout; a transformers TP load hands
    native its DTensor shards instead and never calls this.
    """
    def shard(kind: str, w: torch.Tensor) -> torch.Tensor:
        if kind in "qkv":
            n = (heads if kind == "q" else kv_heads) // world * head_dim
            return w[rank * n:(rank + 1) * n].contiguous()
        if kind == "col":
            n = w.shape[0] // world
            return w[rank * n:(rank + 1) * n].contiguous()
        n = w.shape[1] // world
        return w[:, rank * n:(rank + 1) * n].contiguous()
    return shard


def all_reducer(group: object = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A sum over the ranks with functional collectives (wait_tensor keeps eager order)."""
    from torch.distributed import _functional_collectives as funcol
    import torch.distributed as dist

    group = group if group is not None else dist.group.WORLD

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return funcol.wait_tensor(funcol.all_reduce(x, "sum", group))
    return reduce
