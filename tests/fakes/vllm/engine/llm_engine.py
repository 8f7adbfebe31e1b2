"""vllm.engine.llm_engine: LLMEngine (vLLM's "legacy" synchronous engine, V1 underneath).

Same entry points and signatures as vLLM's: `from_engine_args(engine_args, usage_context=...,
stat_loggers=None, enable_multiprocessing=False)`, `add_request(request_id, prompt, params,
arrival_time=None, lora_request=None, tokenization_kwargs=None, trace_headers=None,
priority=0, prompt_text=None) -> str` (the internal id: the caller's id plus a random suffix),
`step() -> list[RequestOutput]` (one output per running request and step; `request_id` is the
caller's id), `has_unfinished_requests()`, `get_num_unfinished_requests()`,
`abort_request(request_ids: list[str], internal=False)`, `get_tokenizer()`.

The fake model, deterministic so tests can predict every token:
- greedy: next = 100 + (31 * sum(last 8 tokens of the context) + len(context)) % (VOCAB - 100)
- sampling: the same formula plus a draw from random.Random(seed) (seed=None: unseeded)
- a prompt whose last token is EOS_AFTER + k produces the EOS token at generated index k
- the first step that sees a request "prefills" it and already returns its first token
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from vllm.engine.arg_utils import EngineArgs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

VOCAB = 32000
EOS = 2
EOS_AFTER = 31000
FAKE_GPUS = 8
_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}


class FakeTokenizer:
    eos_token_id = EOS
    bos_token_id = 1
    pad_token_id = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [100 + ord(c) % (VOCAB - 100) for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids if not (skip_special_tokens and i < 100))


class _EngineCore:
    def __init__(self) -> None:
        self.alive = True

    def shutdown(self) -> None:
        self.alive = False


@dataclass
class _Request:
    internal_id: str
    external_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    rng: random.Random
    output: list[int] = field(default_factory=list)
    sent: int = 0


class LLMEngine:
    """Legacy LLMEngine for backwards compatibility."""

    instances: list["LLMEngine"] = []   # for tests: every engine made, in order

    def __init__(self, vllm_config: Any, executor_class: Any, log_stats: bool,
                 usage_context: Any = None, stat_loggers: Any = None,
                 multiprocess_mode: bool = False) -> None:
        self.vllm_config = vllm_config
        self.log_stats = log_stats
        self.multiprocess_mode = multiprocess_mode
        self.engine_core = _EngineCore()
        self.tokenizer = FakeTokenizer()
        self.max_model_len = vllm_config.max_model_len or 2048
        self._requests: dict[str, _Request] = {}   # internal id -> request, in arrival order
        self.step_count = 0
        self.aborted: list[str] = []
        LLMEngine.instances.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, usage_context: Any = None,
                         stat_loggers: Any = None,
                         enable_multiprocessing: bool = False) -> "LLMEngine":
        """Creates an LLM engine from the engine arguments."""
        if not isinstance(engine_args, EngineArgs):
            raise TypeError(f"expected EngineArgs, got {type(engine_args).__name__}")
        if engine_args.dtype not in _DTYPES:
            raise ValueError(f"Unknown dtype: {engine_args.dtype}")
        if not 1 <= engine_args.tensor_parallel_size <= FAKE_GPUS:
            raise ValueError(
                f"World size ({engine_args.tensor_parallel_size}) is larger than the number of "
                f"available GPUs ({FAKE_GPUS}) in this node.")
        if not 0 < engine_args.gpu_memory_utilization <= 1:
            raise ValueError("GPU memory utilization must be within (0, 1]. Got "
                             f"{engine_args.gpu_memory_utilization}.")
        return cls(vllm_config=engine_args, executor_class=None,
                   log_stats=not engine_args.disable_log_stats, usage_context=usage_context,
                   stat_loggers=stat_loggers, multiprocess_mode=enable_multiprocessing)

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests)

    def has_unfinished_requests(self) -> bool:
        return len(self._requests) > 0

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        """Remove request_ids from EngineCore and Detokenizer."""
        if isinstance(request_ids, str):   # vLLM would iterate its characters: a silent no-op
            raise TypeError("abort_request takes a list of request ids, not a str")
        for rid in list(request_ids):
            for key, req in list(self._requests.items()):
                if (key if internal else req.external_id) == rid:
                    del self._requests[key]
                    self.aborted.append(req.external_id)

    def add_request(self, request_id: str, prompt: Any, params: Any,
                    arrival_time: float | None = None, lora_request: Any = None,
                    tokenization_kwargs: dict[str, Any] | None = None,
                    trace_headers: Mapping[str, str] | None = None, priority: int = 0,
                    prompt_text: str | None = None) -> str:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
        elif isinstance(prompt, dict) and "prompt" in prompt:
            ids = self.tokenizer.encode(prompt["prompt"])
        else:
            raise TypeError(f"unsupported prompt: {prompt!r}")
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        if len(ids) > self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the "
                             f"maximum model length of {self.max_model_len}.")
        if any(not 0 <= t < VOCAB for t in ids):
            raise ValueError(f"Token id out of vocabulary (size {VOCAB})")
        internal = f"{request_id}-{uuid.uuid4().hex[:8]}"
        self._requests[internal] = _Request(internal, request_id, ids, params,
                                            random.Random(params.seed))
        return internal

    def step(self) -> list[RequestOutput]:
        self.step_count += 1
        outputs = []
        for key, req in list(self._requests.items()):
            token = self._next_token(req)
            req.output.append(token)
            p = req.params
            n = len(req.output)
            reason = None
            if n >= p.min_tokens and (token in p.all_stop_token_ids
                                      or (token == EOS and not p.ignore_eos)):
                reason = "stop"
            elif p.max_tokens is not None and n >= p.max_tokens:
                reason = "length"
            elif len(req.prompt_token_ids) + n >= self.max_model_len:
                reason = "length"
            finished = reason is not None
            if finished:
                del self._requests[key]
            out = self._output(req, reason)
            if out is not None:
                outputs.append(out)
        return outputs

    def _next_token(self, req: _Request) -> int:
        ctx = req.prompt_token_ids + req.output
        k = req.prompt_token_ids[-1] - EOS_AFTER
        if 0 <= k < 1000 and len(req.output) == k:
            return EOS
        token = 100 + (31 * sum(ctx[-8:]) + len(ctx)) % (VOCAB - 100)
        if req.params.temperature >= 1e-5:
            token = 100 + (token + req.rng.randrange(VOCAB)) % (VOCAB - 100)
        return token

    def _output(self, req: _Request, reason: str | None) -> RequestOutput | None:
        kind = req.params.output_kind
        finished = reason is not None
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        ids = req.output[req.sent:] if kind == RequestOutputKind.DELTA else list(req.output)
        req.sent = len(req.output)
        text = self.tokenizer.decode(ids) if req.params.detokenize else ""
        comp = CompletionOutput(index=0, text=text, token_ids=ids, cumulative_logprob=None,
                                logprobs=None, finish_reason=reason,
                                stop_reason=None if reason != "stop" else req.output[-1])
        return RequestOutput(request_id=req.external_id, prompt=None,
                             prompt_token_ids=req.prompt_token_ids, prompt_logprobs=None,
                             outputs=[comp], finished=finished)
