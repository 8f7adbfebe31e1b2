"""backend=hf: transformers' model forward driven by llmtop's own loop (engine/generate.py).

`HfBackend` runs the dynamic and static caches, eager or compiled; `PagedBackend` runs
transformers' continuous batching (kv=paged), which brings its own paged cache and gives ids,
not logits. Both run the model that the runner loaded; switching attention or TunableOp is in
place (`apply`), a compile mode is set up once, in the constructor.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache, StaticCache

from .. import generate, paged, watch
from ..optimizations import attention
from ..generate import Inputs, Sampling, Step
from ..guard import Trace
from .base import Backend, Emit

STATIC_BUCKET = 256
RECOMPILE_LIMIT = torch._dynamo.config.recompile_limit  # the study's per-layer compile hits it


class HfBackend(Backend):
    name = "hf"

    def __init__(self, loaded: Any, opts: dict[str, str], emit: Emit, tp: int = 1) -> None:
        """`tp` > 1: the loaded model is already this rank's shard (engine/tp.py)."""
        self.loaded = loaded
        self.model = loaded.model
        self.emit = emit
        self.decoder: Any = None   # the compiled decode step (compile=full), else None
        self.warmed: set[tuple[int, int]] = set()   # (batch, static length) graphs built
        self.opts: dict[str, str] = {}
        self.apply(opts)
        if opts.get("compile", "off") != "off":
            self._compile(opts["compile"])

    def apply(self, opts: dict[str, str]) -> None:
        self.opts = dict(opts)
        self.model.set_attn_implementation(attention.IMPL[opts["attention"]][0])
        if self.loaded.device.startswith("cuda"):
            torch.cuda.tunable.enable(opts.get("gemm") == "tunableop")

    def _compile(self, mode: str) -> None:
        # Dynamo's caches and its recompile limit are per code object and process-wide: code
        # compiled for an earlier configuration (transformers wraps every forward in one
        # decorator) would count against this one, and it would silently run eager.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        if mode == "layers":
            # the study's recipe: each layer's self-attention compiled with dynamic shapes
            for layer in self.model.model.layers:
                layer.self_attn.forward = torch.compile(layer.self_attn.forward, dynamic=True)
        else:
            # one graph per batch size and static-cache bucket (prefill and decode): more than
            # the default limit of 8, which would drop later shapes to eager without a word
            torch._dynamo.config.recompile_limit = 64
            self.decoder = watch.GraphWatch(
                torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True),
                self.emit)

    def static_len(self, length: int) -> int:
        """The static cache's length for a run (0 for a dynamic cache).

        Rounded up to a bucket, so a short warm-up compiles the graphs a longer run reuses.
        """
        if self.opts["kv"] != "static":
            return 0
        bucket = -(-length // STATIC_BUCKET) * STATIC_BUCKET
        return min(bucket, self.model.config.max_position_embeddings)

    def warm(self, batch: int, prompt_tokens: int, max_new_tokens: int) -> None:
        """compile=full: the decode graphs of this batch size and static-cache length, compiled
        and captured on a throwaway one-token prompt (GraphWatch marks each with its duration).
        A run's static length covers its prompt and new tokens, so it never crosses into
        another bucket while measured."""
        static_len = self.static_len(prompt_tokens + max_new_tokens)
        if self.decoder is None or (batch, static_len) in self.warmed:
            return
        ids = torch.ones(batch, 1, dtype=torch.long, device=self.loaded.device)
        dummy = Inputs(ids, torch.ones_like(ids), [], 1)
        for _ in generate.run(self.model, dummy, 3, Sampling(), self._cache(static_len), set(),
                              True, lambda: False, static_len, self.decoder):
            pass   # two decode calls: compile (and warm up), then capture
        self.warmed.add((batch, static_len))

    def _cache(self, static_len: int) -> Any:
        cfg = self.model.config
        if static_len:
            return StaticCache(config=cfg, max_cache_len=static_len)
        return DynamicCache(config=cfg)

    def generate_steps(self, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
                       eos_ids: set[int], ignore_eos: bool,
                       should_stop: Callable[[], bool]) -> Iterator[Step]:
        static_len = self.static_len(inputs.prompt_tokens + max_new_tokens)
        cache = self._cache(static_len)
        with sdpa_backend(self.opts["attention"]):
            yield from generate.run(self.model, inputs, max_new_tokens, sampling, cache, eos_ids,
                                    ignore_eos, should_stop, static_len, self.decoder)

    def trace(self, inputs: Inputs, tokens: int, forced: Sequence[int] | None = None) -> Trace:
        """Greedy ids and last-position logits of the check prompt, through the same prefill
        and decode steps (and compiled decoder) a run uses; `forced` ids are fed back instead
        of the model's own choices (the baseline's, so each step sees the baseline's context)."""
        static_len = STATIC_BUCKET if self.opts["kv"] == "static" else 0
        cache = self._cache(static_len)
        device = inputs.input_ids.device
        plen = inputs.prompt_tokens
        static = static_len > 0
        mask = torch.ones(1, static_len or plen + tokens, dtype=torch.long, device=device)
        positions = torch.arange(plen, device=device).unsqueeze(0)
        ids: list[int] = []
        fed: list[int] = []
        logits_out: list[torch.Tensor] = []
        with sdpa_backend(self.opts["attention"]), torch.inference_mode():
            logits = generate.prefill(self.model, inputs.input_ids,
                                      mask if static else mask[:, :plen], positions, cache)
            for i in range(tokens):
                last = logits[:, -1, :].float()
                logits_out.append(last[0].cpu())
                nxt = last.argmax(-1, keepdim=True)
                ids.append(int(nxt))
                if i + 1 < tokens:
                    if forced is not None and i < len(forced):
                        nxt = torch.full_like(nxt, forced[i])
                    fed.append(int(nxt))
                    pos = torch.full((1, 1), plen + i, device=device)
                    logits = generate.decode_one_token(
                        self.decoder or self.model, nxt,
                        mask if static else mask[:, :plen + i + 1], pos, cache)
        return Trace(ids, logits_out, fed if forced is not None else None,
                     torch.finfo(self.model.dtype).eps, self.model.config.num_hidden_layers)


class PagedBackend(HfBackend):
    """kv=paged: transformers' continuous batching over a paged cache (not compiled)."""

    def __init__(self, loaded: Any, opts: dict[str, str], emit: Emit, tp: int = 1) -> None:
        super().__init__(loaded, opts, emit, tp)
        self.info: dict[str, Any] = {}

    def generate_steps(self, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
                       eos_ids: set[int], ignore_eos: bool,
                       should_stop: Callable[[], bool]) -> Iterator[Step]:
        self.info = {}
        with sdpa_backend(self.opts["attention"]):
            yield from paged.run_paged(self.model, inputs, max_new_tokens, sampling, eos_ids,
                                       ignore_eos, should_stop, info=self.info)

    def trace(self, inputs: Inputs, tokens: int, forced: Sequence[int] | None = None) -> Trace:
        """Continuous batching gives ids, not logits, and takes no forced ids: the guard
        compares ids up to their first difference."""
        steps = paged.run_paged(self.model, inputs, tokens, Sampling(), set(), True,
                                lambda: False)
        return Trace([s.ids[0] for s in steps], [])

    def run_info(self) -> dict[str, Any]:
        return {"paged": dict(self.info)} if self.info else {}


def sdpa_backend(option: str) -> contextlib.AbstractContextManager:
    """The SDPA kernels an attention option allows (sdpa: all but cuDNN; flash, mem_efficient,
    cudnn: that one), else no pin (engine/optimizations/attention.py says why)."""
    allowed = attention.IMPL[option][1]
    if allowed is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name) for name in allowed])
