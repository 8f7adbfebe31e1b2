"""vllm.engine.llm_engine: LLMEngine (vLLM 0.26's synchronous engine, V1 underneath).

Same entry points and signatures as vLLM's: `from_engine_args(engine_args, usage_context=...,
stat_loggers=None, enable_multiprocessing=False)`, `add_request(request_id, prompt, params,
arrival_time=None, lora_request=None, tokenization_kwargs=None, trace_headers=None,
priority=0, prompt_text=None) -> str` (the internal id: the caller's id plus a random suffix),
`step() -> list[RequestOutput]` (`request_id` is the caller's id), `has_unfinished_requests()`,
`get_num_unfinished_requests()`, `abort_request(request_ids: list[str], internal=False)`,
`get_tokenizer()`.

vLLM 0.26's behaviour that changes what a caller sees, as the fake does it:
- a model given as a .gguf file is refused at engine creation (0.26 has no GGUF loader);
- a prompt of max_model_len tokens or more is refused by add_request (no room for a token);
- the scheduler's budget per step is max_num_batched_tokens (None: 2048, LLMEngine's default)
  over at most max_num_seqs requests (None: 128); decodes are scheduled first, one token each,
  then prefills take what is left in arrival order, so a long batch is prefilled in chunks
  over several steps and its rows' first tokens come at different steps;
- async scheduling: step() returns the outputs of the batch the previous step() ran, so the
  first step() after add_request returns [];
- prefix caching is on unless enable_prefix_caching=False: a prompt's full 16-token blocks
  that an earlier request computed are not prefilled again (never the whole prompt: the last
  token is always computed), and RequestOutput.num_cached_tokens says how many were reused;
- tensor_parallel_size > 1 starts one worker process a rank (spawn, daemon, as vLLM's
  MultiprocExecutor does: a daemonic caller cannot), each holding a death pipe: a worker exits
  when the engine's process ends, however it ends. FAKE_VLLM_WORKER_PIDS names a file each
  worker appends its pid to (for tests).

The fake model, deterministic so tests can predict every token:
- greedy: next = 100 + (31 * sum(last 8 tokens of the context) + len(context)) % (VOCAB - 100)
- sampling: the same formula plus a draw from random.Random(seed) (seed=None: unseeded)
- a prompt whose last token is EOS_AFTER + k produces the EOS token at generated index k
"""

from __future__ import annotations

import multiprocessing
import os
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
BLOCK = 16                  # tokens per KV block, the unit of prefix caching
DEFAULT_BATCHED_TOKENS = 2048
DEFAULT_SEQS = 128
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


def _worker_main(rank: int, death_pipe: Any, ready: Any) -> None:
    """A tensor-parallel worker: records its pid, says it is ready, then lives until its
    engine's process is gone (EOF on the death pipe) or shuts it down."""
    path = os.environ.get("FAKE_VLLM_WORKER_PIDS")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    ready.send("READY")
    ready.close()
    try:
        death_pipe.recv()
    except EOFError:
        pass


class _EngineCore:
    def __init__(self, world_size: int) -> None:
        self.alive = True
        self.workers: list[Any] = []
        self._pipes: list[Any] = []
        self._ready: list[Any] = []
        if world_size > 1:
            ctx = multiprocessing.get_context("spawn")
            for rank in range(world_size):
                reader, writer = ctx.Pipe(duplex=False)
                ready_in, ready_out = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_main, args=(rank, reader, ready_out),
                                daemon=True, name=f"VllmWorker-{rank}")
                p.start()   # AssertionError in a daemonic process, as in vLLM
                reader.close()
                ready_out.close()
                self.workers.append(p)
                self._pipes.append(writer)
                self._ready.append(ready_in)
            for pipe in self._ready:   # as vLLM's executor, wait until every worker is up
                if pipe.recv() != "READY":
                    raise RuntimeError("a worker failed to start")

    def shutdown(self) -> None:
        self.alive = False
        for pipe in self._pipes:
            pipe.close()
        for p in self.workers:
            p.join(5)


@dataclass
class _Request:
    internal_id: str
    external_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    rng: random.Random
    computed: int = 0           # prompt tokens in the KV cache (cached or prefilled)
    num_cached_tokens: int = 0
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
        self.tokenizer = FakeTokenizer()
        self.max_model_len = vllm_config.max_model_len or 2048
        self.budget = vllm_config.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS
        self.max_seqs = vllm_config.max_num_seqs or DEFAULT_SEQS
        self.prefix_caching = vllm_config.enable_prefix_caching is not False
        self._requests: dict[str, _Request] = {}   # internal id -> request, in arrival order
        self._in_flight: list[RequestOutput] = []  # the last batch's outputs, not yet returned
        self._blocks: set[tuple[int, ...]] = set()  # prefixes of whole blocks computed so far
        self.step_count = 0
        self.scheduled: list[int] = []             # tokens scheduled at each step (for tests)
        self.aborted: list[str] = []
        self.engine_core = _EngineCore(vllm_config.tensor_parallel_size)
        LLMEngine.instances.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, usage_context: Any = None,
                         stat_loggers: Any = None,
                         enable_multiprocessing: bool = False) -> "LLMEngine":
        """Creates an LLM engine from the engine arguments."""
        if not isinstance(engine_args, EngineArgs):
            raise TypeError(f"expected EngineArgs, got {type(engine_args).__name__}")
        if engine_args.model.endswith(".gguf"):   # 0.26 finds no config: no GGUF loader
            raise ValueError("Invalid repository ID or local directory specified: "
                             f"'{engine_args.model}'.")
        if engine_args.dtype not in _DTYPES:
            raise ValueError(f"Unknown dtype: {engine_args.dtype}")
        if not 1 <= engine_args.tensor_parallel_size <= FAKE_GPUS:
            raise ValueError(
                f"World size ({engine_args.tensor_parallel_size}) is larger than the number of "
                f"available GPUs ({FAKE_GPUS}) in this node.")
        if not 0 < engine_args.gpu_memory_utilization <= 1:
            raise ValueError("GPU memory utilization must be within (0, 1]. Got "
                             f"{engine_args.gpu_memory_utilization}.")
        ids = engine_args.device_ids
        if ids is not None and len(set(ids)) != len(ids):
            raise ValueError(f"--device-ids must not contain duplicates: {ids}")
        return cls(vllm_config=engine_args, executor_class=None,
                   log_stats=not engine_args.disable_log_stats, usage_context=usage_context,
                   stat_loggers=stat_loggers, multiprocess_mode=enable_multiprocessing)

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests) + len([o for o in self._in_flight if o.finished])

    def has_unfinished_requests(self) -> bool:
        return self.get_num_unfinished_requests() > 0

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        """Remove request_ids from EngineCore and Detokenizer."""
        if isinstance(request_ids, str):   # vLLM would iterate its characters: a silent no-op
            raise TypeError("abort_request takes a list of request ids, not a str")
        for rid in list(request_ids):
            for key, req in list(self._requests.items()):
                if (key if internal else req.external_id) == rid:
                    del self._requests[key]
                    self.aborted.append(req.external_id)
            self._in_flight = [o for o in self._in_flight if o.request_id != rid]

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
        if len(ids) == self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) plus the number of "
                             "requested output tokens (at least 1) is longer than the maximum "
                             f"model length of {self.max_model_len}.")
        if any(not 0 <= t < VOCAB for t in ids):
            raise ValueError(f"Token id out of vocabulary (size {VOCAB})")
        internal = f"{request_id}-{uuid.uuid4().hex[:8]}"
        req = _Request(internal, request_id, ids, params, random.Random(params.seed))
        req.computed = req.num_cached_tokens = self._cached(ids)
        self._requests[internal] = req
        return internal

    def _cached(self, ids: list[int]) -> int:
        """Prompt tokens whose KV an earlier request computed: whole blocks, never all."""
        if not self.prefix_caching:
            return 0
        n = 0
        while n + BLOCK <= len(ids) - 1 and tuple(ids[:n + BLOCK]) in self._blocks:
            n += BLOCK
        return n

    def step(self) -> list[RequestOutput]:
        """Runs one scheduled batch and returns the previous one's outputs (async scheduling:
        two batches in flight)."""
        if not self.engine_core.alive:
            raise RuntimeError("the engine core is shut down")
        self.step_count += 1
        ran, self._in_flight = self._in_flight, self._run_batch()
        return ran

    def _run_batch(self) -> list[RequestOutput]:
        budget, outputs, tokens = self.budget, [], 0
        running = list(self._requests.items())[:self.max_seqs]
        decoding = [(k, r) for k, r in running if r.computed == len(r.prompt_token_ids)]
        prefilling = [(k, r) for k, r in running if r.computed < len(r.prompt_token_ids)]
        sampled = []
        for key, req in decoding:
            if budget == 0:
                break
            budget -= 1
            sampled.append((key, req))
        for key, req in prefilling:
            if budget == 0:
                break
            take = min(budget, len(req.prompt_token_ids) - req.computed)
            req.computed += take
            budget -= take
            if req.computed == len(req.prompt_token_ids):
                self._remember(req.prompt_token_ids)
                sampled.append((key, req))
        self.scheduled.append(self.budget - budget)
        for key, req in sampled:
            out = self._sample(key, req)
            if out is not None:
                outputs.append(out)
        return outputs

    def _remember(self, ids: list[int]) -> None:
        if self.prefix_caching:
            self._blocks.update(tuple(ids[:n]) for n in range(BLOCK, len(ids) + 1, BLOCK))

    def _sample(self, key: str, req: _Request) -> RequestOutput | None:
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
        if reason is not None:
            del self._requests[key]
        return self._output(req, reason)

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
                             outputs=[comp], finished=finished,
                             num_cached_tokens=req.num_cached_tokens)
