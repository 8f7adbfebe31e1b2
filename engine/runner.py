"""The engine proper: holds the model, applies configurations, runs requests, emits events."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

import torch
from transformers import DynamicCache, StaticCache

from llmtop.engine import metrics as run_metrics
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, Error, ErrorKind,
                                    Generate, GuardResult, ModelInfo, RunDone, RunStarted, Status,
                                    Token)

from . import catalogue, ceilings, generate, guard, models, paged, record, threads, tp, watch
from .step_profile import StepProfiler
from . import spec as specs

Emit = Callable[[Any], None]
STATIC_BUCKET = 256
RECOMPILE_LIMIT = torch._dynamo.config.recompile_limit  # the study's per-layer compile hits it


class Engine:
    def __init__(self, emit: Emit, stop: threading.Event, ranks: tp.Ranks | None = None,
                 thread_plan: threads.ThreadPlan | None = None) -> None:
        self.emit = emit
        self.thread_plan = thread_plan
        self.stop = stop
        # tensor parallelism (engine/tp.py): rank 0 mirrors every Configure / Generate to its
        # followers, which run this same class in lockstep with their events discarded
        self.ranks = ranks or tp.Ranks()
        self.loaded: models.Loaded | None = None
        self.config: Configure | None = None
        self.ceilings: dict[str, Any] = {}
        self.baseline: guard.Trace | None = None
        self.guard: GuardResult | None = None
        self.decoder: Any = None   # the compiled decode step (compile=full), else None
        self.vllm: Any = None      # backend=vllm: a vllm_backend.VllmEngine
        self.placement: tp.Placement | None = None   # every rank's device, from rank 0
        self.device = "cpu"        # this rank's own device (cuda:K of its placement)
        watch.install(emit)

    # ---- configuration ------------------------------------------------------------------

    def configure(self, cfg: Configure) -> None:
        """Load the model, or apply a new configuration in place where the library allows.

        In place: attention implementation, SDPA backend, cache type, TunableOp (~ms).
        Reload: model, device, dtype, and any change of compile mode (a compiled forward
        cannot be cleanly un-compiled). Then the correctness guard runs, which for a compiled
        configuration is also its warm-up, reported as the compiling phase with elapsed time.
        """
        t0 = time.perf_counter()
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        spec = specs.resolve(cfg.model)
        opts = {**catalogue.DEFAULTS, **cfg.opts, "dtype": cfg.dtype}
        catalogue.check(opts, cfg.device)
        gpus = list(cfg.gpus) if cfg.gpus is not None else None
        if self.ranks.rank == 0:  # --tp: heads divisible, GPUs there; before anything loads
            tp.check(spec, cfg.device, cfg.tp, opts)
            placement = tp.place(cfg.device, cfg.tp, gpus)
        else:  # a follower: rank 0 placed it (Follower.receive wrote its device into cfg)
            placement = tp.Placement([cfg.device])
        cfg = Configure(cfg.model, cfg.device, cfg.dtype, opts, cfg.tp, gpus)
        old = self.config
        reload = (old is None or self.loaded is None or self.placement is None or
                  (old.model, old.dtype, old.tp) != (cfg.model, cfg.dtype, cfg.tp) or
                  self.placement.devices != placement.devices or
                  old.opts.get("compile") != opts["compile"] or
                  old.opts.get("backend", "hf") != opts["backend"])
        vllm = opts["backend"] == "vllm"  # vLLM runs its own tensor parallelism
        if reload:
            self._unload()
            self.placement, self.device = placement, placement.devices[0]
            # rank 0 starts or ends followers to match cfg.tp (a follower keeps its group)
            self.ranks = tp.resize(self.ranks, 1 if vllm else cfg.tp,
                                   placement.devices[:1] if vllm else placement.devices,
                                   self._rank_lost)
        self.ranks.mirror(cfg)  # followers run this same configure from here on, in lockstep
        if reload:
            with self._heartbeat("loading", f"loading {spec.name} on {self.device}"):
                self.loaded = models.load(spec, self.device, cfg.dtype, "eager", self._progress,
                                          tp=1 if vllm else cfg.tp,
                                          devices=self.ranks.devices(self.device))
            self.loaded.gpus, self.loaded.gpu_choice = placement.gpus, placement.why
            self.baseline = self._trace("eager", False)
            self.emit(Status("warming", "measuring the device's bandwidth and FLOP/s ceilings"))
            self.ceilings = ceilings.get(self.device, models.DTYPES[cfg.dtype])
            if vllm:
                self._start_vllm(cfg)
        model = self.loaded.model
        model.set_attn_implementation(catalogue.ATTENTION_IMPL[opts["attention"]][0])
        if cfg.device.startswith("cuda"):
            torch.cuda.tunable.enable(opts["gemm"] == "tunableop")
        if reload and opts["compile"] != "off":
            self._compile(opts["compile"])
        self.config = cfg
        self.emit(ModelInfo(**self.loaded.info()))
        self.emit(DeviceInfo(self.device, self.ceilings["device_name"], self.ceilings["mem_bw_gb_s"],
                             self.ceilings["peak_tflops"],
                             catalogue.as_dict(catalogue.availability(cfg.device)),
                             torch.cuda.device_count() if torch.cuda.is_available() else 0,
                             threads=torch.get_num_threads(), cpus=threads.usable_cpus(),
                             threads_note=self.thread_plan.reason if self.thread_plan else ""))
        self.emit(ConfigApplied(cfg, "loaded" if reload else "in place",
                                time.perf_counter() - t0))
        phase = "compiling" if opts["compile"] != "off" else "warming"
        if opts["gemm"] == "tunableop" and phase == "warming":
            phase = "tuning"
        tuning = self._tuning_watch()
        try:
            with self._heartbeat(phase, "correctness guard on the check prompt"):
                current = self._trace(opts["attention"], opts["kv"] == "static",
                                      opts["kv"] == "paged")
            if tuning is not None:
                tuning.check("during the correctness check")
        except RuntimeError as e:
            # e.g. a pinned SDPA kernel that refuses this model's shapes (GQA, head size)
            self.config = old if not reload else None
            if self.config is not None:
                model.set_attn_implementation(
                    catalogue.ATTENTION_IMPL[old.opts["attention"]][0])
            what = " ".join(f"{k}={v}" for k, v in cfg.opts.items()
                            if v != catalogue.DEFAULTS.get(k))
            raise catalogue.OptionError(f"{what or 'this configuration'} failed on "
                                        f"{spec.name}: {_one_line(e)}") from None
        self.guard = guard.compare(self.baseline, current)
        self.emit(self.guard)
        self.emit(Status("ready", f"{spec.name} on {', '.join(dict.fromkeys(self.loaded.devices))}"))

    def _start_vllm(self, cfg: Configure) -> None:
        """vLLM's engine for the loaded model. transformers' copy, kept for the guard's baseline
        and the model's shape figures, moves to the meta device so its memory is vLLM's."""
        from . import vllm_backend

        with self._heartbeat("loading", "starting vLLM's engine"):
            source, extra = vllm_backend.model_source(
                self.loaded, specs.cache_dir() / "vllm" / self.loaded.spec.name.replace(":", "-"))
            self.loaded.model.to("meta")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.vllm = vllm_backend.VllmEngine(source, cfg.dtype, tensor_parallel_size=cfg.tp,
                                                **extra)

    def _trace(self, attention: str, static: bool, paged_kv: bool = False) -> guard.Trace:
        if self.vllm is not None:
            return guard.trace_vllm(self.vllm, self.loaded.tokenizer, self.loaded.model.config,
                                    self.loaded.device)
        model = self.loaded.model
        if paged_kv:  # continuous batching gives ids, not logits: the guard compares ids
            return guard.trace_paged(model, self.loaded.tokenizer, self.loaded.device)
        model.set_attn_implementation(catalogue.ATTENTION_IMPL[attention][0])
        length = STATIC_BUCKET if static else 0  # the shapes a short run's graphs will have
        cache = (StaticCache(config=model.config, max_cache_len=length) if static
                 else DynamicCache(config=model.config))
        with _sdpa_backend(attention):
            return guard.trace(model, self.loaded.tokenizer, self.loaded.device, cache, length,
                               self.decoder)

    def _compile(self, mode: str) -> None:
        model = self.loaded.model
        # Dynamo's caches and its recompile limit are per code object and process-wide: code
        # compiled for an earlier configuration (transformers wraps every forward in one
        # decorator) would count against this one, and it would silently run eager.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        if mode == "layers":
            # the study's recipe: each layer's self-attention compiled with dynamic shapes
            for layer in model.model.layers:
                layer.self_attn.forward = torch.compile(layer.self_attn.forward, dynamic=True)
        else:
            # one graph per batch size and static-cache bucket (prefill and decode): more than
            # the default limit of 8, which would drop later shapes to eager without a word
            torch._dynamo.config.recompile_limit = 64
            self.decoder = watch.GraphWatch(
                torch.compile(model.forward, mode="reduce-overhead", fullgraph=True), self.emit)

    def _tuning_watch(self) -> watch.TuningWatch | None:
        """A TunableOp watch when this configuration tunes GEMMs, else None."""
        if (self.loaded is not None and self.loaded.device.startswith("cuda")
                and torch.cuda.tunable.is_enabled()):
            return watch.TuningWatch(self.emit)
        return None

    def _rank_lost(self, why: str) -> None:
        self.emit(Error(ErrorKind.ENGINE_DEAD, why, recoverable=True))

    def close(self) -> None:
        """Ends the tensor-parallel followers, if any (the worker calls this on Shutdown)."""
        self.ranks.close()
        self.ranks = tp.Ranks()

    def _unload(self) -> None:
        self.loaded = None
        self.decoder = None
        if self.vllm is not None:
            self.vllm.close()
            self.vllm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _progress(self, detail: str, fraction: float | None) -> None:
        self.emit(Status("loading", detail, fraction))

    @contextlib.contextmanager
    def _heartbeat(self, phase: str, detail: str):
        """Status events every 0.5 s with elapsed time while a long step runs."""
        done = threading.Event()
        t0 = time.perf_counter()

        def beat() -> None:
            while not done.wait(0.5):
                self.emit(Status(phase, detail, None, time.perf_counter() - t0))

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # ---- generation ---------------------------------------------------------------------

    def generate(self, req: Generate) -> None:
        if self.loaded is None or self.config is None:
            self.emit(Error(ErrorKind.NOT_CONFIGURED, "configure the engine before generating"))
            return
        self.ranks.mirror(req)  # followers run the same request, step for step
        self.stop.clear()
        loaded, cfg = self.loaded, self.config
        model, tok = loaded.model, loaded.tokenizer
        mcfg = model.config
        start_ns = time.perf_counter_ns()
        try:
            inputs = generate.prepare(req, tok, mcfg.vocab_size, mcfg.max_position_embeddings,
                                      self.device)
        except ValueError as e:
            self.emit(Error(ErrorKind.BAD_REQUEST, str(e)))
            return
        self.emit(RunStarted(req.run_id, inputs.prompts, inputs.prompt_tokens, req.batch,
                             req.max_new_tokens, start_ns))
        self.emit(Status("generating", f"run {req.run_id}"))
        gen = None
        if req.sample:
            gen = torch.Generator(device=self.device).manual_seed(req.seed)
        sampling = generate.Sampling(req.sample, req.temperature, req.top_p, req.top_k, gen)
        static_len = self._static_len(inputs.prompt_tokens + req.max_new_tokens)
        # continuous batching and vLLM bring their own paged caches
        paged_run = cfg.opts["kv"] == "paged" or self.vllm is not None
        cache = (None if paged_run else
                 StaticCache(config=mcfg, max_cache_len=static_len) if static_len
                 else DynamicCache(config=mcfg))
        stream = generate.Stream(tok, req.batch)
        eos = _eos_ids(model, tok)
        should_stop = self.ranks.agree(self.stop.is_set)
        paged_info: dict[str, Any] = {}
        if self.vllm is not None:
            steps = self.vllm.generate_steps(paged.unpadded_rows(inputs), req.max_new_tokens,
                                             sampling, req.ignore_eos, should_stop, eos)
        elif paged_run:
            steps = paged.run_paged(model, inputs, req.max_new_tokens, sampling, eos,
                                    req.ignore_eos, should_stop, info=paged_info)
        else:
            steps = generate.run(model, inputs, req.max_new_tokens, sampling, cache, eos,
                                 req.ignore_eos, should_stop, static_len, self.decoder)
        tokens: list[list[dict[str, Any]]] = [[] for _ in range(req.batch)]
        stamps: list[int] = []
        stopped = ""
        profiler = None
        tuning = self._tuning_watch()
        if req.profile_steps > 0 and self.ranks.rank == 0:
            profiler = StepProfiler(req.run_id, req.profile_steps, self.device, cfg.tp)
            profiler.start()
        try:
            with _sdpa_backend(cfg.opts["attention"]):
                for step in steps:
                    texts = stream.push(step.ids)
                    stamps.append(step.t_ns)
                    for r, (tid, text, live) in enumerate(zip(step.ids, texts, step.live)):
                        if live:
                            tokens[r].append({"index": step.index, "id": tid, "text": text,
                                              "t_ns": step.t_ns})
                    self.emit(Token(req.run_id, step.index, step.ids, texts, step.t_ns))
                    if tuning is not None:
                        tuning.check(f"by token {step.index}")
                    if profiler is not None and profiler.tick():
                        self.emit(profiler.finish())
                        profiler = None
            if tuning is not None:
                tuning.summary(f"run {req.run_id}", len(stamps))
            if self.stop.is_set():
                stopped = "stop"
        except torch.OutOfMemoryError:
            stopped = "oom"
            self.emit(Error(ErrorKind.OOM, f"out of device memory at batch {req.batch}, prompt "
                                   f"{inputs.prompt_tokens} tokens, after {len(stamps)} tokens"))
        except RuntimeError as e:
            stopped = "error"
            self.emit(Error(ErrorKind.RUNTIME, _one_line(e)))
        finally:
            if profiler is not None:  # the run ended before the profiled steps did
                self.emit(profiler.finish())
            del cache
            if stopped == "oom":
                gc.collect()
                torch.cuda.empty_cache()
        if stamps and self.ranks.rank == 0:
            m = run_metrics.run_metrics(start_ns, stamps, req.batch, inputs.prompt_tokens)
            rec = record.build(loaded.info(), asdict(cfg), asdict(req), tokens, m.to_dict(),
                               asdict(self.guard) if self.guard else {}, stopped)
            rec["start_ns"] = start_ns
            rec["kv_bytes_per_token"] = rec["model"]["kv_bytes_per_token"]
            rec["ceilings"] = self.ceilings
            if paged_info:
                rec["paged"] = paged_info
            info = rec["model"]
            rec["roofline"] = asdict(run_metrics.roofline(
                m, info["weight_bytes"], info["params"], rec["kv_bytes_per_token"],
                self.ceilings["mem_bw_gb_s"], self.ceilings["peak_tflops"], ranks=cfg.tp))
            self.emit(RunDone(req.run_id, rec))
        self.emit(Status("ready", "error" if stopped in ("oom", "error") else ""))

    def _static_len(self, length: int) -> int:
        """The static cache's length for a run (0 for a dynamic cache).

        Rounded up to a bucket, so a short warm-up compiles the graphs a longer run reuses.
        """
        if self.config.opts["kv"] != "static":
            return 0
        bucket = -(-length // STATIC_BUCKET) * STATIC_BUCKET
        return min(bucket, self.loaded.model.config.max_position_embeddings)


def _sdpa_backend(attention: str) -> contextlib.AbstractContextManager:
    """The SDPA kernel an attention option pins (flash, mem_efficient, cudnn), else no pin."""
    backend = catalogue.ATTENTION_IMPL[attention][1]
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, backend)])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    if ids is None:
        ids = model.config.eos_token_id
    out = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
