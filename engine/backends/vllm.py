"""backend=vllm: vLLM's engine (its paged attention, CUDA graphs, tensor parallelism) behind
the same Step stream as the transformers paths.

Built to vLLM 0.26's public engine API (scripts/vllm_contract.py checks every name and
signature used here against the 0.26.0 wheel; docs/vllm.md): `EngineArgs(model=, dtype=,
tensor_parallel_size=, enforce_eager=, device_ids=, ...)`, `LLMEngine.from_engine_args(args)`, `add_request(request_id,
TokensPrompt(prompt_token_ids=...), SamplingParams(...))`, `step()` returning `RequestOutput`s
(`.request_id`, `.outputs[0].token_ids`, `.finished`), `has_unfinished_requests()`,
`abort_request([ids])`. vLLM is imported only when backend=vllm is configured: `import vllm`
costs seconds, and on a GPU machine it switches cuDNN attention off process-wide and sets
inductor and NVML environment variables, which would change what backend=hf measures.
Availability is read from the package's metadata, without importing it.

Stamps: `Step.t_ns` is `perf_counter_ns()` right after the `step()` that delivered the last
request's token of that index; `step()` returns only once the token ids are on the host (in
process, or over vLLM's own IPC when its engine core runs in a separate process).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import itertools
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .. import spec as specs
from ..catalogue import OptionError
from ..generate import Inputs, Sampling, Step
from ..guard import Trace
from ..paged import MAX_BATCH_TOKENS, PagedStep, StepAssembler, unpadded_rows
from ..tp_placement import device_index
from .base import Backend, Emit

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def build_platform() -> str | None:
    """The device type this vLLM build is for, from its version's local label (0.9.1+cpu,
    0.9.1+rocm634, plain or +cu126 for CUDA), read from the package metadata: no import.
    None when there is no metadata to read (a source tree, a test fake)."""
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None
    label = version.partition("+")[2].lower()
    for device_type in ("cpu", "rocm", "xpu", "tpu", "neuron", "hpu"):
        if label.startswith(device_type):
            return device_type
    return "cuda"


def vllm_available(device: str = "cuda") -> tuple[bool, str]:
    """Whether backend=vllm can run on `device` here, and if not, why (one line).

    vLLM is built for one platform (CUDA, ROCm or CPU), and only that device can run it. Read
    without importing vLLM; `check_platform` confirms it when backend=vllm starts.
    """
    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM not installed (pip install vllm)"
    return _platform_fits(build_platform(), device)


def _platform_fits(platform: str | None, device: str) -> tuple[bool, str]:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return False, "vLLM needs a CUDA or ROCm GPU (none visible to torch)"
        if platform not in (None, "cuda", "rocm"):
            return False, f"this vLLM is built for {platform}, not CUDA/ROCm"
        return True, ""
    if platform not in (None, "cpu"):
        return False, f"this vLLM is built for {platform}, not the CPU"
    return True, ""


def check_platform(device: str) -> None:
    """Raises OptionError when vLLM's own `current_platform` cannot run `device` (imports vLLM:
    call it only for backend=vllm)."""
    from vllm.platforms import current_platform

    ok, why = _platform_fits(current_platform.device_type, device)
    if not ok:
        raise OptionError(f"backend=vllm is unavailable here: {why}")


def model_source(loaded: Any, folder: Path) -> tuple[str, dict[str, Any]]:
    """What vLLM loads for the model llmtop loaded: its checkpoint folder (for the embedded
    model, the safetensors folder llmtop converts it to), or for a synthetic shape its config
    (and tokenizer) written to `folder` with vLLM's random "dummy" weights. A .gguf file is
    refused (OptionError): vLLM 0.26 reads no GGUF."""
    spec = loaded.spec
    if spec.kind == "synthetic":
        folder.mkdir(parents=True, exist_ok=True)
        loaded.model.config.save_pretrained(folder)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(folder)
        return str(folder), {"load_format": "dummy",
                             "skip_tokenizer_init": loaded.tokenizer is None}
    if spec.kind == "embedded":
        from ..models import convert_embedded

        return str(convert_embedded(lambda *_: None)), {}
    check_model(spec)
    return spec.path, {}


def check_model(spec: specs.ModelSpec) -> None:
    """Raises OptionError for a model vLLM 0.26 cannot load: a .gguf file (no GGUF loader)."""
    if spec.kind == "gguf":
        raise OptionError(f"backend=vllm cannot load {spec.name}: vLLM 0.26 has no GGUF loader "
                          "(give a safetensors model folder, or the embedded model)")


def sampling_params(sampling: Sampling, max_new_tokens: int, ignore_eos: bool,
                    row: int = 0) -> Any:
    """Our Sampling as vLLM SamplingParams; greedy is temperature 0. Rows get seed + row, so
    that a batch of one prompt does not sample the same text in every row."""
    from vllm import SamplingParams

    kw: dict[str, Any] = {"max_tokens": max_new_tokens, "ignore_eos": ignore_eos,
                          "detokenize": False}  # llmtop detokenizes its own stream
    if not sampling.sample:
        return SamplingParams(temperature=0.0, **kw)
    seed = sampling.generator.initial_seed() + row if sampling.generator is not None else None
    return SamplingParams(temperature=max(sampling.temperature, 1e-5),
                          top_p=sampling.top_p if 0 < sampling.top_p < 1 else 1.0,
                          top_k=sampling.top_k if sampling.top_k > 0 else -1,  # -1: off, all
                          seed=seed, **kw)


# The scheduler's budget per step: kv=paged's token budget (paged.MAX_BATCH_TOKENS, 16384).
# vLLM's LLMEngine defaults (2048 tokens, 128 sequences) would prefill `--batch 8
# --prompt-len 2048` over 8 steps; the dynamic path prefills a batch in one forward pass.
MAX_SEQS = 256
MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class VllmEngine:
    """One vLLM LLMEngine for a model; `generate_steps` runs a batch as concurrent requests."""

    def __init__(self, model_path_or_name: str, dtype: str = "bf16",
                 tensor_parallel_size: int = 1, enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 seed: int = 0, device_ids: list[int] | None = None,
                 **engine_kwargs: Any) -> None:
        """`dtype` takes llmtop's names (bf16, fp16, fp32) or vLLM's; `device_ids`: the GPUs
        (torch's cuda:K indices, which vLLM reads within CUDA_VISIBLE_DEVICES), one a rank;
        `engine_kwargs` go to EngineArgs as they are (e.g. load_format="dummy").

        Prefix caching is off: a benchmark repeats one seeded prompt, and a cached prefill
        would make every TTFT after the warm-up a cache hit. vLLM's engine core runs in this
        process (VLLM_ENABLE_V1_MULTIPROCESSING=0, forced: `notes` says when a user's value was
        overridden), so step() returns with the token ids in hand and nothing extra is spawned
        for tp=1; for tp>1 vLLM starts one worker process a rank (see `_start`).
        """
        self.notes: list[str] = []
        if os.environ.get(MP_ENV, "0") != "0":
            self.notes.append(f"{MP_ENV}={os.environ[MP_ENV]} overridden to 0: vLLM's engine "
                              "core runs inside llmtop's engine process")
        os.environ[MP_ENV] = "0"
        from vllm import EngineArgs

        kw = {"max_num_batched_tokens": MAX_BATCH_TOKENS, "max_num_seqs": MAX_SEQS,
              "enable_prefix_caching": False, **engine_kwargs}
        if device_ids is not None:
            kw["device_ids"] = list(device_ids)
        args = EngineArgs(model=model_path_or_name, dtype=DTYPES.get(dtype, dtype),
                          tensor_parallel_size=tensor_parallel_size,
                          enforce_eager=enforce_eager,
                          gpu_memory_utilization=gpu_memory_utilization,
                          max_model_len=max_model_len, seed=seed, disable_log_stats=True, **kw)
        self.args = args
        self.engine = _start(args, tensor_parallel_size)
        self._runs = itertools.count()
        self.last_run: dict[str, Any] = {}

    def eos_ids(self) -> set[int]:
        """The EOS ids vLLM stops at (its tokenizer's; the model's generation config adds to
        them inside vLLM, which is why callers may pass their own set to generate_steps)."""
        tok = self.engine.get_tokenizer()
        eos = getattr(tok, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set(eos or ())

    def generate_steps(self, prompts_token_ids: Sequence[Sequence[int]], max_new_tokens: int,
                       sampling: Sampling, ignore_eos: bool, should_stop: Callable[[], bool],
                       eos_ids: set[int] | None = None) -> Iterator[PagedStep]:
        """One Step per token index once every live request has it, as `generate.run` yields.

        Rows are unpadded prompts (see `paged.unpadded_rows`). A step() may return nothing (the
        first after add_request does: vLLM keeps two batches in flight) and a row's first token
        may come steps after another's (a chunked prefill); each token is stamped at the step
        that delivered it, and a Step is yielded once its index is complete. On stop, on an
        error (a refused add_request too), or when the consumer closes the iterator, the
        unfinished requests are aborted so the next run starts on an empty engine.
        """
        from vllm import TokensPrompt

        eos = self.eos_ids() if eos_ids is None else set(eos_ids)
        run = next(self._runs)
        self.last_run = self._budget(prompts_token_ids)
        rows: dict[str, int] = {}
        asm = StepAssembler(len(prompts_token_ids), eos, min(eos) if eos else 0)
        stamps: list[list[int]] = [[] for _ in prompts_token_ids]
        finished: set[str] = set()
        try:
            for r, prompt in enumerate(prompts_token_ids):
                rid = f"llmtop-{run}-{r}"
                rows[rid] = r
                self.engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt)),
                                        sampling_params(sampling, max_new_tokens, ignore_eos, r))
            while not asm.done:
                if not self.engine.has_unfinished_requests():
                    raise RuntimeError("vLLM ended the requests before they finished")
                outputs = self.engine.step()
                now = time.perf_counter_ns()
                for out in outputs:
                    r = rows.get(out.request_id)
                    if r is None:
                        continue
                    tokens = list(out.outputs[0].token_ids)
                    stamps[r] += [now] * (len(tokens) - len(stamps[r]))
                    asm.update(r, tokens, out.finished, stamps[r])
                    if out.finished:
                        finished.add(out.request_id)
                for step in asm.pop(now):
                    yield step
                    if should_stop():
                        return
        finally:
            left = [rid for rid in rows if rid not in finished]
            if left:
                self.engine.abort_request(left)

    def _budget(self, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
        """The scheduler's budget against this batch: whether its prefill fits one step."""
        tokens = sum(len(p) for p in prompts)
        budget, seqs = self.args.max_num_batched_tokens, self.args.max_num_seqs
        return {"max_num_batched_tokens": budget, "max_num_seqs": seqs,
                "prefix_caching": bool(self.args.enable_prefix_caching),
                "prefill_chunked": tokens > budget or len(prompts) > seqs,
                "notes": list(self.notes)}

    def close(self) -> None:
        """Shut vLLM's engine core down and drop the engine (frees its KV cache)."""
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.engine = None


def _start(args: Any, tensor_parallel_size: int) -> Any:
    """LLMEngine.from_engine_args, allowed to start vLLM's tp>1 worker processes.

    The engine process is a daemon of its EngineClient (it must never outlive the dashboard),
    and multiprocessing lets no daemon start children: the flag is lifted while vLLM starts its
    workers, as engine/tp.py does for its followers. vLLM's workers are daemons with a death
    pipe: they exit when this process ends, however it ends (tested with the fake's workers).
    """
    from vllm import LLMEngine

    me = multiprocessing.current_process()
    was_daemon = me.daemon
    if tensor_parallel_size > 1:
        me.daemon = False
    try:
        return LLMEngine.from_engine_args(args)
    finally:
        me.daemon = was_daemon


class VllmBackend(Backend):
    """backend=vllm: the loaded transformers model hands its weights' source to vLLM's engine
    and moves to the meta device (the runner keeps it for the guard's baseline, already traced,
    and for the model's shape figures), so the device memory is vLLM's."""

    name = "vllm"
    own_tensor_parallel = True

    @classmethod
    def check_model(cls, spec: Any) -> None:
        check_model(spec)

    def __init__(self, loaded: Any, opts: dict[str, str], emit: Emit, tp: int = 1) -> None:
        check_platform(loaded.device)
        source, extra = model_source(
            loaded, specs.cache_dir() / "vllm" / loaded.spec.name.replace(":", "-"))
        loaded.model.to("meta")
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        devices = loaded.devices or [loaded.device]
        ids = [device_index(d) for d in devices] if loaded.device.startswith("cuda") else None
        self.engine = VllmEngine(source, loaded.dtype, tensor_parallel_size=tp,
                                 device_ids=ids, **extra)

    def generate_steps(self, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
                       eos_ids: set[int], ignore_eos: bool,
                       should_stop: Callable[[], bool]) -> Iterator[Step]:
        return self.engine.generate_steps(unpadded_rows(inputs), max_new_tokens, sampling,
                                          ignore_eos, should_stop, eos_ids)

    def trace(self, inputs: Inputs, tokens: int, forced: Sequence[int] | None = None) -> Trace:
        """vLLM gives ids, not logits, and takes no forced ids: the guard compares ids up to
        their first difference."""
        steps = self.engine.generate_steps(unpadded_rows(inputs), tokens, Sampling(), True,
                                           lambda: False, set())
        return Trace([s.ids[0] for s in steps], [])

    def run_info(self) -> dict[str, Any]:
        return {"vllm": dict(self.engine.last_run)} if self.engine.last_run else {}

    def close(self) -> None:
        self.engine.close()
