"""kv=paged: the batch through transformers' continuous batching with a paged KV cache.

The rows of a batch become concurrent requests of one `ContinuousBatchingManager` (its own
generation thread, a `PagedAttentionCache` of fixed-size pages, a FIFO scheduler). We read its
streamed outputs with one blocking `get_result()` loop (never `request_id_iter`, which busy-loops
with several streaming requests and starves generation) and turn them back into the dynamic
path's shape: one `Step` per token index, once every live request has produced that index.

Stamps. `Step.t_ns` is `perf_counter_ns()` when the last request's token of that index reached
this thread. `PagedStep.host_t_ns` keeps, per request, the stamp the batching thread took right
after that token's id was read on the host (`record_timestamps`; the same clock), which does not
include the hop between the two threads; 0 where a request produced nothing at that index.

Exactness. Greedy tokens equal the dynamic path's in fp32 (tested). The cache is sized to the
batch (no auto-sizing to 60-90 % of free memory), prefix sharing is off (a batch repeats one
prompt: sharing would skip most of the batch's prefill and change what TTFT measures), and the
safety margin is 0 so that every request is prefilled in the first forward pass, as in the
dynamic path.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .generate import Inputs, Sampling, Step

PAGE_SIZE = 256             # tokens per page (transformers' default)
MAX_BATCH_TOKENS = 16384    # tokens of one forward pass; longer prefills are split
WAIT_S = 0.5                # get_result() timeout between liveness checks


@dataclass
class PagedStep(Step):
    host_t_ns: list[int] = field(default_factory=list)  # per request; 0: none at this index


def paged_available() -> tuple[bool, str]:
    """Whether kv=paged can run with this transformers, and if not, why (one line)."""
    if importlib.util.find_spec("transformers") is None:
        return False, "transformers is not installed"
    import transformers

    mixin = getattr(transformers, "GenerationMixin", None)
    if (not hasattr(transformers, "ContinuousBatchingConfig")
            or not hasattr(mixin, "init_continuous_batching")):
        return False, (f"transformers {transformers.__version__} has no continuous batching "
                       "(needs 5.x)")
    return True, ""


# catalogue attention option -> what continuous batching runs for it (None: refused)
_CB_ATTENTION = {"eager": "paged|eager", "sdpa": "sdpa", "flash": "sdpa",
                 "mem_efficient": "sdpa", "cudnn": "sdpa",
                 "flash_attention_2": "flash_attention_2", "flex": None}


def paged_conflict(attention: str) -> str | None:
    """Why kv=paged cannot run with this attention option (None when it can)."""
    if _CB_ATTENTION.get(attention, "") is None:
        return (f"kv=paged runs transformers' continuous batching, which supports eager, sdpa "
                f"and flash attention, not {attention}")
    return None


def unpadded_rows(inputs: Inputs) -> list[list[int]]:
    """Each row's prompt token ids without its left padding."""
    ids = inputs.input_ids.tolist()
    mask = inputs.attention_mask.tolist()
    return [[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)]


class StepAssembler:
    """Per-request token streams in, dynamic-path Steps out (shared with the vLLM adapter).

    Index k is complete once every request has a token at k or has finished. `live[r]` follows
    the dynamic path exactly: true up to and including the request's first EOS, false after it
    and for a request that ended earlier (whose id slot then repeats its last token).
    """

    def __init__(self, batch: int, eos_ids: set[int], fill_id: int = 0) -> None:
        self.batch = batch
        self.eos = set(eos_ids)
        self.fill_id = fill_id
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.host_ns: list[list[int]] = [[] for _ in range(batch)]
        self.finished = [False] * batch
        self.first_eos = [math.inf] * batch   # index of each request's first EOS
        self.next_index = 0

    @property
    def done(self) -> bool:
        return all(self.finished) and self.next_index >= max(map(len, self.tokens), default=0)

    def update(self, r: int, tokens: list[int], finished: bool,
               host_ns: list[int] | None = None) -> None:
        """Request r's tokens so far (cumulative), whether it has ended, its host stamps."""
        seq = self.tokens[r]
        for k in range(len(seq), len(tokens)):
            if tokens[k] in self.eos and self.first_eos[r] == math.inf:
                self.first_eos[r] = k
        seq.extend(tokens[len(seq):])
        if host_ns is not None:
            self.host_ns[r] = host_ns
        self.finished[r] = self.finished[r] or finished

    def pop(self, t_ns: int) -> list[PagedStep]:
        """The Steps completed by the updates so far, stamped t_ns."""
        out = []
        while True:
            k = self.next_index
            lens = [len(s) for s in self.tokens]
            if not any(n > k for n in lens):
                return out
            if not all(n > k or f for n, f in zip(lens, self.finished)):
                return out
            ids = [s[k] if n > k else (s[-1] if s else self.fill_id)
                   for s, n in zip(self.tokens, lens)]
            live = [n > k and k <= e for n, e in zip(lens, self.first_eos)]
            host = [h[k] if len(h) > k else 0 for h in self.host_ns]
            out.append(PagedStep(k, ids, t_ns, live, host))
            self.next_index += 1


def run_paged(model: Any, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
              eos_ids: set[int], ignore_eos: bool, should_stop: Callable[[], bool],
              info: dict[str, Any] | None = None, page_size: int = PAGE_SIZE,
              max_batch_tokens: int = MAX_BATCH_TOKENS) -> Iterator[PagedStep]:
    """Yields one Step per generated position, as `generate.run` does, through a paged cache.

    The model's attention implementation is used as set (eager runs as `paged|eager`; flex is
    refused: see `paged_conflict`); continuous batching restores it when it stops. `info`, if
    given, receives what ran: attention, page size, blocks, CUDA graphs, async batching.
    """
    import torch
    from transformers import ContinuousBatchingConfig

    rows = unpadded_rows(inputs)
    batch = len(rows)
    eos_arg: int | list[int] = -1 if ignore_eos or not eos_ids else sorted(eos_ids)
    blocks = sum(math.ceil((len(r) + max_new_tokens) / page_size) + 1 for r in rows)
    cb_config = ContinuousBatchingConfig(
        page_size=page_size, num_blocks=blocks,
        max_batch_tokens=max(batch, min(sum(map(len, rows)), max_batch_tokens)),
        allow_block_sharing=False, safety_margin=0.0, auto_switch_to_flash=False,
        seed=sampling.generator.initial_seed() if sampling.sample and sampling.generator else None)
    manager = model.init_continuous_batching(
        generation_config=_generation_config(sampling, max_new_tokens, eos_arg),
        continuous_batching_config=cb_config, workload_hints=_hints(rows, max_new_tokens))
    ids: dict[str, int] = {}
    finished: set[str] = set()
    try:
        with torch.inference_mode():  # the generation thread inherits the caller's mode
            manager.start()
        for r, row in enumerate(rows):
            rid = manager.add_request(row, request_id=f"row{r}", max_new_tokens=max_new_tokens,
                                      streaming=True, record_timestamps=True, eos_token_id=eos_arg)
            if rid is None:  # refused: the batching thread has already stopped (and why)
                raise _loop_error(manager)
            ids[rid] = r
        fill = min(eos_ids) if eos_ids else 0
        asm = StepAssembler(batch, eos_ids, fill)
        described = False
        while not asm.done:
            res = manager.get_result(timeout=WAIT_S)
            now = time.perf_counter_ns()
            if res is None:
                if not manager.is_running():
                    raise _loop_error(manager)
                continue
            if res.error is not None:
                raise _request_error(res.error)
            if res.is_finished():
                finished.add(res.request_id)
            stamps = ([int(t * 1e9) for t in res.timestamps]
                      if res.timestamps is not None else None)
            asm.update(ids[res.request_id], res.generated_tokens, res.is_finished(), stamps)
            if info is not None and not described:
                info.update(_describe(model, manager))
                described = True
            for step in asm.pop(now):
                yield step
                if should_stop():
                    return
    finally:
        for rid in ids:
            if rid not in finished:
                manager.cancel_request(rid)
        if manager.is_running():
            manager.stop(block=True, hard_stop=len(finished) < len(ids))
        manager.destroy()


def _generation_config(sampling: Sampling, max_new_tokens: int, eos: int | list[int]) -> Any:
    from transformers import GenerationConfig

    kw: dict[str, Any] = {"do_sample": sampling.sample, "max_new_tokens": max_new_tokens,
                          "eos_token_id": eos}
    if sampling.sample:
        kw["temperature"] = max(sampling.temperature, 1e-5)
        kw["top_k"] = sampling.top_k if sampling.top_k > 0 else None
        kw["top_p"] = sampling.top_p if 0 < sampling.top_p < 1 else None
    return GenerationConfig(**kw)


def _hints(rows: list[list[int]], max_new_tokens: int) -> Any:
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:
        return None
    return WorkloadHints(max_prompt_length=max(map(len, rows)),
                         max_generated_length=max_new_tokens, num_requests=len(rows))


def _describe(model: Any, manager: Any) -> dict[str, Any]:
    cfg = manager.continuous_batching_config
    graphs = getattr(cfg, "use_cuda_graph", None)
    return {"attention": model.config._attn_implementation, "page_size": cfg.page_size,
            "num_blocks": cfg.num_blocks, "max_batch_tokens": cfg.max_batch_tokens,
            "cuda_graphs": list(graphs) if isinstance(graphs, tuple) else graphs,
            "async_batching": getattr(cfg, "use_async_batching", None)}


def _request_error(message: str) -> RuntimeError:
    import torch

    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    low = message.lower()
    if "out of memory" in low or "more than available memory" in low:
        # the latter: the paged cache's own footprint check (MemoryError), before any forward
        return torch.OutOfMemoryError(f"paged KV cache: {line}")
    return RuntimeError(f"continuous batching: {line}")


def _loop_error(manager: Any) -> RuntimeError:
    fatal = getattr(manager.background_thread_status, "fatal_error", None)
    if fatal is not None:
        return _request_error(f"{type(fatal).__name__}: {fatal}")
    return RuntimeError("continuous batching stopped before the requests finished")
