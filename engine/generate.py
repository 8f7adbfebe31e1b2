"""Generation as small pure steps (prefill, decode_one_token, select), with honest stamps.

Each step's token ids are read on the host (`.tolist()`), which waits for the device; the
stamp is taken right after, so it marks when the token really existed. The next step is
launched before the previous token is detokenized and sent, so on a GPU that host work
overlaps the device's and the observer does not slow what it observes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from llmtop.engine.protocol import MAX_TEMPERATURE, Generate


class PromptTooLong(ValueError):
    """The prompt plus the tokens asked for exceed the model's context."""


@dataclass
class Inputs:
    input_ids: torch.Tensor        # [batch, prompt_len], left-padded
    attention_mask: torch.Tensor   # [batch, prompt_len]
    prompts: list[str]
    prompt_tokens: int


def prepare(req: Generate, tokenizer: Any, vocab: int, max_context: int, device: str) -> Inputs:
    """Token ids for a request: text, chat messages, or a synthetic prompt of a given length."""
    if req.sample and not 0 < req.temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {req.temperature}")
    if req.prompt_len is not None:
        gen = torch.Generator().manual_seed(req.seed)
        # skip the first ids (special tokens in most vocabularies)
        ids = torch.randint(100, vocab, (req.batch, req.prompt_len), generator=gen)
        mask = torch.ones_like(ids)
        text = tokenizer.decode(ids[0].tolist()) if tokenizer is not None else ""
        prompts = [text] * req.batch
    else:
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: give --prompt-len instead of text")
        if req.messages is not None:
            text = tokenizer.apply_chat_template(req.messages, tokenize=False,
                                                 add_generation_prompt=True)
        else:
            text = req.prompt or ""
        prompts = [text] * req.batch
        enc = tokenizer(prompts, return_tensors="pt", padding=True,
                        add_special_tokens=req.messages is None)
        ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty")
    if int(ids.max()) >= vocab:  # a synthetic model borrowing a larger tokenizer
        ids = ids % vocab
    need = ids.shape[1] + req.max_new_tokens
    if need > max_context:
        raise PromptTooLong(f"prompt of {ids.shape[1]} tokens + {req.max_new_tokens} new tokens "
                            f"exceeds the model's context of {max_context}")
    return Inputs(ids.to(device), mask.to(device), prompts, int(ids.shape[1]))


@dataclass
class Sampling:
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    generator: torch.Generator | None = None


def select(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Next token ids [batch, 1] from the last position's logits."""
    logits = logits[:, -1, :].float()
    if not s.sample:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / max(s.temperature, 1e-5)
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < s.top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        cum = ordered.softmax(-1).cumsum(-1)
        drop = cum - ordered.softmax(-1) > s.top_p
        logits = logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=s.generator)


def prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            cache: Any) -> torch.Tensor:
    # each call is a new step for CUDA-graph trees (compile=full): the previous step's outputs
    # may then be overwritten, which is fine because we have already read them
    torch.compiler.cudagraph_mark_step_begin()
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                 use_cache=True, logits_to_keep=1).logits


def decode_one_token(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                     positions: torch.Tensor, cache: Any) -> torch.Tensor:
    torch.compiler.cudagraph_mark_step_begin()
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                 use_cache=True).logits


@dataclass
class Step:
    index: int
    ids: list[int]
    t_ns: int
    live: list[bool]   # per request: still generating at this step (not past its EOS)


@dataclass
class Stream:
    """Per-request incremental detokenizer (the prefix-offset scheme of TGI and vLLM)."""

    tokenizer: Any
    batch: int
    ids: list[list[int]] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = [[] for _ in range(self.batch)]
        self.offsets = [(0, 0)] * self.batch

    def push(self, ids: list[int]) -> list[str]:
        """The new text each request's token adds ("" while a multi-byte char is incomplete)."""
        out = []
        for r, tid in enumerate(ids):
            seq = self.ids[r]
            seq.append(tid)
            if self.tokenizer is None:
                out.append(f"<{tid}>")
                continue
            prefix, read = self.offsets[r]
            before = self.tokenizer.decode(seq[prefix:read], skip_special_tokens=True)
            after = self.tokenizer.decode(seq[prefix:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                out.append(after[len(before):])
                self.offsets[r] = (read, len(seq))
            else:
                out.append("")
        return out


def run(model: Any, inputs: Inputs, max_new_tokens: int, sampling: Sampling, cache: Any,
        eos_ids: set[int], ignore_eos: bool, should_stop: Callable[[], bool],
        static_len: int = 0, decoder: Any = None) -> Iterator[Step]:
    """Yields one Step per generated position, stamped when its ids reached the host.

    The caller handles each Step while the device already computes the next one. With a
    static cache the mask keeps its full length (the cache's causal offset hides the future),
    so every decode step has the same shapes and a compiled graph is reused, not recompiled.
    `static_len` is the static cache's length (0: a dynamic cache). `decoder`, if given, runs
    the decode steps (a compiled forward); the prefill stays eager, as in transformers' own
    generate(): it fills the lazily created static cache outside the captured graphs.
    """
    batch, plen = inputs.input_ids.shape
    device = inputs.input_ids.device
    static = static_len > 0
    length = static_len if static else plen + max_new_tokens
    mask = torch.ones(batch, length, dtype=inputs.attention_mask.dtype, device=device)
    mask[:, :plen] = inputs.attention_mask
    positions = (inputs.attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        logits = prefill(model, inputs.input_ids, mask if static else mask[:, :plen], positions,
                         cache)
        next_ids = select(logits, sampling)
        ids = next_ids.view(-1).tolist()
        t_ns = time.perf_counter_ns()
        finished = [False] * batch
        pos = positions[:, -1:]
        for i in range(1, max_new_tokens + 1):
            live = [not f for f in finished]
            finished = [f or (t in eos_ids) for f, t in zip(finished, ids)]
            done = i == max_new_tokens or (not ignore_eos and all(finished)) or should_stop()
            if not done:
                pos = pos + 1
                logits = decode_one_token(decoder or model, next_ids,
                                          mask if static else mask[:, :plen + i], pos, cache)
            yield Step(i - 1, ids, t_ns, live)
            if done:
                return
            next_ids = select(logits, sampling)
            ids = next_ids.view(-1).tolist()
            t_ns = time.perf_counter_ns()
