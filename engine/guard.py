"""The correctness guard: does this configuration produce the baseline's greedy tokens?

The baseline (eager attention, dynamic cache, no compile) is traced right after each load;
every configuration is then traced on the same check prompt. Where the ids first differ, the
contexts are still identical, so the logit gap there says how close the call was (bf16 kernels
that sum in another order often flip a near-tie: that is a numerics fact, not a bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from llmtop.engine.protocol import Generate, GuardResult

from . import generate

CHECK_PROMPT = "The largest continent is"
CHECK_TOKENS = 12
BASELINE = "attention=eager kv=dynamic compile=off"


@dataclass
class Trace:
    ids: list[int]
    logits: list[torch.Tensor]   # per step, last position, float32 on the host


def trace(model: Any, tokenizer: Any, device: str, cache: Any, static_len: int,
          decoder: Any = None) -> Trace:
    """Greedy ids and logits of the check prompt under the model's current configuration."""
    cfg = model.config
    req = Generate(prompt=CHECK_PROMPT if tokenizer is not None else None,
                   prompt_len=None if tokenizer is not None else 16, max_new_tokens=CHECK_TOKENS)
    inputs = generate.prepare(req, tokenizer, cfg.vocab_size, cfg.max_position_embeddings, device)
    plen = inputs.prompt_tokens
    static = static_len > 0
    mask = torch.ones(1, static_len or plen + CHECK_TOKENS, dtype=torch.long, device=device)
    positions = torch.arange(plen, device=device).unsqueeze(0)
    ids: list[int] = []
    logits_out: list[torch.Tensor] = []
    with torch.inference_mode():
        logits = generate.prefill(model, inputs.input_ids, mask if static else mask[:, :plen],
                                  positions, cache)
        for i in range(CHECK_TOKENS):
            last = logits[:, -1, :].float()
            logits_out.append(last[0].cpu())
            nxt = last.argmax(-1, keepdim=True)
            ids.append(int(nxt))
            if i + 1 < CHECK_TOKENS:
                pos = torch.full((1, 1), plen + i, device=device)
                logits = generate.decode_one_token(
                    decoder or model, nxt, mask if static else mask[:, :plen + i + 1], pos, cache)
    return Trace(ids, logits_out)


def trace_paged(model: Any, tokenizer: Any, device: str) -> Trace:
    """The check prompt through continuous batching (kv=paged): ids only, no logits."""
    from . import paged

    cfg = model.config
    req = Generate(prompt=CHECK_PROMPT if tokenizer is not None else None,
                   prompt_len=None if tokenizer is not None else 16, max_new_tokens=CHECK_TOKENS)
    inputs = generate.prepare(req, tokenizer, cfg.vocab_size, cfg.max_position_embeddings, device)
    steps = paged.run_paged(model, inputs, CHECK_TOKENS, generate.Sampling(), set(), True,
                            lambda: False)
    return Trace([s.ids[0] for s in steps], [])


def trace_vllm(engine: Any, tokenizer: Any, cfg: Any, device: str) -> Trace:
    """The check prompt through vLLM (backend=vllm): ids only, as with the paged path."""
    from .paged import unpadded_rows

    req = Generate(prompt=CHECK_PROMPT if tokenizer is not None else None,
                   prompt_len=None if tokenizer is not None else 16, max_new_tokens=CHECK_TOKENS)
    inputs = generate.prepare(req, tokenizer, cfg.vocab_size, cfg.max_position_embeddings, device)
    steps = engine.generate_steps(unpadded_rows(inputs), CHECK_TOKENS, generate.Sampling(), True,
                                  lambda: False, set())
    return Trace([s.ids[0] for s in steps], [])


def compare(baseline: Trace, current: Trace) -> GuardResult:
    """Where the greedy ids first differ; the logit gap there when both traces have logits."""
    with_logits = bool(baseline.logits and current.logits)
    for k, (a, b) in enumerate(zip(baseline.ids, current.ids)):
        if a != b:
            diff = (float((baseline.logits[k] - current.logits[k]).abs().max())
                    if with_logits else None)
            return GuardResult("diverged", k, diff, len(baseline.ids), BASELINE)
    diff = (max(float((a - b).abs().max()) for a, b in zip(baseline.logits, current.logits))
            if with_logits else None)
    return GuardResult("identical", None, diff, len(baseline.ids), BASELINE)
