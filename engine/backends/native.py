"""backend=native: llmtop's own Llama forward (engine/native/) behind the Backend interface.

Built once per configuration: the constructor fuses the weights, preallocates the KV cache
(kv=static or kv=paged) and, for compile=full, builds the decode step (llmtop's kernels, their
tilings timed on the card, on one CUDA device; inductor-compiled pieces under tensor
parallelism) and captures it in CUDA graphs, build and capture each an EngineEvent with its
duration. A run then only prefills (eagerly, one request at a
time, with the pinned attention) and replays; the token read that stamps a step is its only
host sync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from llmtop.engine.protocol import EngineEvent

from ..generate import Inputs, Sampling, Step, select
from ..guard import Trace
from ..native import tp as native_tp
from ..native.graphs import KERNELS, Decoder
from ..native.kv import PagedKV, StaticKV
from ..native.model import NativeLlama, NativeUnsupported, check
from .base import Backend, Emit

# the prefill's attention per `attention` option: an SDPA backend pinned, or flex
SDPA_PINNED = {"flash": "FLASH_ATTENTION", "mem_efficient": "EFFICIENT_ATTENTION",
               "cudnn": "CUDNN_ATTENTION", "eager": "MATH", "math": "MATH"}
ATTENTION = ("sdpa", "flex", *SDPA_PINNED)
PAGE_SIZE = 16
_TIMED = "duration_ms" in {f.name for f in dataclasses.fields(EngineEvent)}


def attention_for(name: str) -> Callable[..., torch.Tensor]:
    """Causal attention over one request's prompt (q [1, H, T, D], k/v [1, KV heads, T, D])."""
    if name not in ATTENTION:
        raise NativeUnsupported(f"backend=native prefills with SDPA or flex attention, not "
                                f"{name!r}: choose one of {', '.join(ATTENTION)}")
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            t = q.shape[2]
            mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, t, t,
                                     device=q.device)
            return flex_attention(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
        return flex
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = getattr(SDPBackend, SDPA_PINNED[name]) if name in SDPA_PINNED else None

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        if group > 1:   # prefill is compute-bound: repeating K/V costs little, works everywhere
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        ctx = sdpa_kernel([pinned]) if pinned is not None else contextlib.nullcontext()
        with ctx:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return sdpa


# The engine's KV context for backend=native: a static cache reserves max_batch x context x
# kv_bytes_per_token up front (8 x 4096 x 0.5 MB = 16 GB for Llama-2-7B in bf16); a longer
# request is refused with one line.
ENGINE_CONTEXT = 4096


class TokenReader:
    """Copies each step's ids to the host without waiting for the step queued after it: on
    CUDA into two pinned buffers in turn, each with an event (a plain .tolist() would wait for
    the whole stream, the next step included). On the CPU every op has run when it returns."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.bufs = [torch.empty(batch, dtype=torch.long, pin_memory=True) for _ in (0, 1)]
            self.events = [torch.cuda.Event() for _ in (0, 1)]
        self.turn = 0

    def start(self, ids: torch.Tensor) -> Callable[[], list[int]]:
        """Starts the copy of ids [B, 1]; the returned call waits for it and gives the list."""
        if not self.cuda:
            return lambda: ids.view(-1).tolist()
        i, self.turn = self.turn, self.turn ^ 1
        self.bufs[i].copy_(ids.view(-1), non_blocking=True)
        self.events[i].record()

        def wait() -> list[int]:
            self.events[i].synchronize()
            return self.bufs[i].tolist()
        return wait


class NativeBackend(Backend):
    name = "native"

    def __init__(self, loaded: Any, opts: dict[str, str], emit: Emit, tp: int | None = None, *,
                 max_batch: int = 8, context: int | None = ENGINE_CONTEXT,
                 page_size: int = PAGE_SIZE, pool_tokens: int | None = None, tp_rank: int = 0,
                 graph_batches: list[int] | None = None,
                 compile_mode: str | None = KERNELS) -> None:
        """`tp` > loaded.tp (a whole model on each rank, tests and CPU): native slices the
        weights itself; otherwise the loaded model's DTensors already hold this rank's part.
        `context`: the KV positions each request may use (None: the model's whole context);
        the engine's default caps it so a static cache for `max_batch` requests stays small."""
        self.emit = emit
        self.opts = dict(opts)
        self.max_batch = max_batch
        check(loaded.model)
        cfg = loaded.model.config
        world = tp or loaded.tp
        native_tp.check_divides(cfg.num_attention_heads, cfg.num_key_value_heads, world)
        if opts.get("kv", "static") not in ("static", "paged"):
            raise NativeUnsupported(f"backend=native has kv=static and kv=paged, not "
                                    f"kv={opts.get('kv')}")
        if opts.get("compile", "off") not in ("off", "full"):
            raise NativeUnsupported("backend=native has compile=off and compile=full "
                                    "(the decode step in CUDA graphs), not compile=layers")
        self.attend = attention_for(opts.get("attention", "sdpa"))
        rank = tp_rank
        if world > 1 and loaded.tp == world:
            import torch.distributed as dist
            rank = dist.get_rank()
        shard = None
        if world > loaded.tp:
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            shard = native_tp.sharder(rank, world, cfg.num_attention_heads,
                                      cfg.num_key_value_heads, head_dim)
        reduce = native_tp.all_reducer() if world > 1 else None
        self.model = NativeLlama(loaded.model, rank, world, reduce, shard)
        s = self.model.shape
        self.context = min(context or s.context, s.context)
        args = (s.layers, max_batch, self.context, s.kv_heads, s.head_dim, self.model.dtype,
                self.model.device)
        if opts.get("kv", "static") == "paged":
            if self.context % page_size:
                raise NativeUnsupported(f"the page size ({page_size}) must divide the KV "
                                        f"context ({self.context})")
            self.cache: Any = PagedKV(*args, page=page_size,
                                      pool_tokens=pool_tokens or max_batch * self.context)
        else:
            self.cache = StaticKV(*args)
        self.decoder = Decoder(self.model, self.cache, max_batch,
                               opts.get("compile", "off") == "full", self._event, compile_mode,
                               graph_batches)

    def _event(self, kind: str, detail: str, t_ns: int, ms: float) -> None:
        extra = {"duration_ms": ms} if _TIMED else {}
        self.emit(EngineEvent(kind, detail if _TIMED else f"{detail} ({ms:.0f} ms)", t_ns, **extra))

    def takes_in_place(self, opts: dict[str, str]) -> bool:
        """Only attention changes in place: the cache and the captured step are built for
        their kv, compile and gemm settings."""
        return all(opts.get(a) == self.opts.get(a) for a in ("kv", "compile", "gemm"))

    def apply(self, opts: dict[str, str]) -> None:
        """The prefill's attention changes in place (the captured decode step does not use it)."""
        self.attend = attention_for(opts.get("attention", "sdpa"))
        self.opts.update(opts)

    def _rows(self, inputs: Inputs) -> list[torch.Tensor]:
        """Each request's prompt without its left padding (one read of the mask, not per step)."""
        lengths = inputs.attention_mask.sum(-1).tolist()
        width = inputs.input_ids.shape[1]
        return [inputs.input_ids[r:r + 1, width - n:] for r, n in enumerate(lengths)]

    def _prefill(self, inputs: Inputs, max_new_tokens: int) -> tuple[torch.Tensor, list[int]]:
        """Every request's prompt into the cache; (last logits [B, V], lengths)."""
        rows = self._rows(inputs)
        lengths = [r.shape[1] for r in rows]
        if len(rows) > self.max_batch:
            raise NativeUnsupported(f"batch {len(rows)} exceeds backend=native's KV cache "
                                    f"of {self.max_batch} requests")
        if max(lengths) + max_new_tokens > self.context:
            raise NativeUnsupported(f"prompt of {max(lengths)} tokens + {max_new_tokens} new "
                                    f"exceeds backend=native's KV context of {self.context}")
        self.decoder.check(len(rows))
        self.cache.begin(lengths)
        logits = torch.cat([self.model.prefill(ids, r, self.cache, self.attend)
                            for r, ids in enumerate(rows)])
        self.decoder.start(lengths)
        return logits, lengths

    def _launch(self, next_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The decode step after `next_ids` (no wait); rows then hold one more token each."""
        self.cache.grow(lengths)
        logits = self.decoder.step(next_ids, len(lengths), max(lengths) + 1)
        lengths[:] = [n + 1 for n in lengths]
        return logits

    def generate_steps(self, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
                       eos_ids: set[int], ignore_eos: bool,
                       should_stop: Callable[[], bool]) -> Iterator[Step]:
        """Steps like the hf path's, one step ahead: step i + 1 is queued (its input is step
        i's sampled ids, on the device) before step i's ids are read, so the device never
        waits for the host's read, stamp and send between steps. A run that stops early has
        computed one step it does not report (never past max_new_tokens)."""
        batch = inputs.input_ids.shape[0]
        finished = [False] * batch
        reader = TokenReader(batch, self.model.device)
        with torch.inference_mode():
            logits, lengths = self._prefill(inputs, max_new_tokens)
            next_ids = select(logits[:, None, :], sampling)
            read = reader.start(next_ids)
            for i in range(1, max_new_tokens + 1):
                if i < max_new_tokens:
                    next_ids = select(self._launch(next_ids, lengths)[:, None, :], sampling)
                    read_next = reader.start(next_ids)
                ids = read()
                t_ns = time.perf_counter_ns()
                live = [not f for f in finished]
                finished = [f or (t in eos_ids) for f, t in zip(finished, ids)]
                done = i == max_new_tokens or (not ignore_eos and all(finished)) or should_stop()
                yield Step(i - 1, ids, t_ns, live)
                if done:
                    return
                read = read_next

    def trace(self, inputs: Inputs, tokens: int, forced: Sequence[int] | None = None) -> Trace:
        ids: list[int] = []
        fed: list[int] = []
        logits_out: list[torch.Tensor] = []
        with torch.inference_mode():
            logits, lengths = self._prefill(inputs, tokens)
            for i in range(tokens):
                logits_out.append(logits[0].float().cpu())
                next_ids = logits.argmax(-1, keepdim=True)
                ids.append(int(next_ids[0, 0]))
                if i + 1 < tokens:
                    if forced is not None and i < len(forced):
                        next_ids = torch.full_like(next_ids, forced[i])
                    fed.append(int(next_ids[0, 0]))
                    logits = self._launch(next_ids, lengths)
        return Trace(ids, logits_out, fed if forced is not None else None,
                     torch.finfo(self.model.dtype).eps, self.model.shape.layers)

    def run_info(self) -> dict[str, Any]:
        return dict(kv=self.cache.kind, kv_page_tokens=getattr(self.cache, "page", None),
                    kv_context=self.context, kv_max_batch=self.max_batch,
                    cuda_graphs=len(self.decoder.graphs), **self.cache.usage())

    def close(self) -> None:
        self.decoder.graphs.clear()
        del self.cache, self.decoder
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
