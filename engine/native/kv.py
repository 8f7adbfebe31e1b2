"""The two KV caches of backend=native: static (contiguous rows) and paged (a block pool).

Both are preallocated at construction, so their addresses never change and a captured decode
step keeps working. Both expose the same calls to the forward, each computed once per step,
not per layer: `targets(rows, slots)`, the index pair where token (rows[i], slots[i]) lives
(`cache.k[layer][targets] = k` stores it), and `pages(batch, span)`, what `read(layer, batch,
span, pages)` gathers ([batch, kv_heads, span, head_dim]) for SDPA; on CUDA the decode kernel
(attention.py) reads the pool in place through `blocks()` instead.

static reserves a whole context row per request; paged hands a request one page at a time as
it grows (the host knows every length, so allocating never waits for the device), which is
why a batch of mixed lengths is served in less KV memory. `usage()` says both figures.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class KVFull(RuntimeError):
    """The paged pool has no free page left (the message is one line)."""


class StaticKV:
    kind = "static"

    def __init__(self, layers: int, max_batch: int, context: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: Any) -> None:
        shape = (max_batch, context, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_batch, self.context = max_batch, context
        self.token_bytes = 2 * layers * kv_heads * head_dim * self.k[0].element_size()
        self.batch = 0
        self.used_tokens = 0

    def begin(self, lengths: list[int]) -> None:
        """A new batch whose rows start with these prompt lengths."""
        self.batch = len(lengths)
        self.used_tokens = sum(lengths)

    def grow(self, lengths: list[int]) -> None:
        """The rows are about to write slot lengths[r] (the decode step that follows)."""
        self.used_tokens = sum(lengths) + len(lengths)

    def targets(self, rows: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows, slots

    def pages(self, batch: int, span: int) -> None:
        return None

    def blocks(self) -> tuple[None, int]:
        """What the decode kernel reads the rows through: no table, slots in place."""
        return None, 1

    def read(self, layer: int, batch: int, span: int,
             pages: None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.k[layer][:batch, :span].transpose(1, 2),
                self.v[layer][:batch, :span].transpose(1, 2))

    def usage(self) -> dict[str, int]:
        return dict(kv_pool_bytes=self.max_batch * self.context * self.token_bytes,
                    kv_reserved_bytes=self.batch * self.context * self.token_bytes,
                    kv_used_bytes=self.used_tokens * self.token_bytes)


class PagedKV:
    """A pool of pages of `page` tokens; table[r, j] is the page holding row r's slots j*page.."""

    kind = "paged"

    def __init__(self, layers: int, max_batch: int, context: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: Any, page: int, pool_tokens: int) -> None:
        if page < 1 or context % page:
            raise ValueError(f"the page size ({page}) must divide the context ({context})")
        self.page, self.context, self.max_batch = page, context, max_batch
        self.n_pages = max(1, pool_tokens // page) + 1     # page 0: where unassigned slots point
        shape = (self.n_pages, page, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.token_bytes = 2 * layers * kv_heads * head_dim * self.k[0].element_size()
        self.per_row = context // page
        self.table = torch.zeros(max_batch, self.per_row, dtype=torch.long, device=device)
        pin = torch.device(device).type == "cuda"
        self.host_table = torch.zeros(max_batch, self.per_row, dtype=torch.long, pin_memory=pin)
        self.free: list[int] = []
        self.owned: list[list[int]] = []
        self.used_tokens = 0

    def begin(self, lengths: list[int]) -> None:
        """Frees the last batch's pages and gives each row the pages its prompt fills."""
        self.free = list(range(self.n_pages - 1, 0, -1))
        self.owned = [[] for _ in lengths]
        self.host_table.zero_()
        self.used_tokens = 0
        self._ensure([n - 1 for n in lengths])
        self.used_tokens = sum(lengths)

    def grow(self, lengths: list[int]) -> None:
        """Pages for slot lengths[r] of each row, before the decode step that writes it."""
        self._ensure(lengths)
        self.used_tokens = sum(lengths) + len(lengths)

    def _ensure(self, last_slots: list[int]) -> None:
        changed = False
        for r, slot in enumerate(last_slots):
            while len(self.owned[r]) * self.page <= slot:
                if not self.free:
                    raise KVFull(f"the paged KV pool ({(self.n_pages - 1) * self.page} tokens) is "
                                 "full: raise the pool size or lower the batch")
                page = self.free.pop()
                self.host_table[r, len(self.owned[r])] = page
                self.owned[r].append(page)
                changed = True
        if changed:  # pinned and asynchronous: no host sync; the host copy is not touched again
            self.table.copy_(self.host_table, non_blocking=True)   # before later token reads

    def targets(self, rows: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[rows, slots // self.page], slots % self.page

    def pages(self, batch: int, span: int) -> torch.Tensor:
        return self.table[:batch, :math.ceil(span / self.page)]

    def blocks(self) -> tuple[torch.Tensor, int]:
        """The decode kernel reads each row's pages through the table, no gather."""
        return self.table, self.page

    def read(self, layer: int, batch: int, span: int,
             pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, pages.shape[1] * self.page) + self.k[layer].shape[2:]
        k = self.k[layer][pages].view(shape)[:, :span]
        v = self.v[layer][pages].view(shape)[:, :span]
        return k.transpose(1, 2), v.transpose(1, 2)

    def usage(self) -> dict[str, int]:
        reserved = sum(len(o) for o in self.owned) * self.page
        return dict(kv_pool_bytes=(self.n_pages - 1) * self.page * self.token_bytes,
                    kv_reserved_bytes=reserved * self.token_bytes,
                    kv_used_bytes=self.used_tokens * self.token_bytes)
