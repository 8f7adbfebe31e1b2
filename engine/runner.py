"""The engine proper: holds the model, applies configurations, runs requests, emits events.

How the tokens are computed is a backend's (engine/backends/); loading, the guard, the stamps,
the record and the events are the runner's, the same for every backend.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any, Callable

import torch

from llmtop.engine import metrics as run_metrics
from llmtop.engine.protocol import (STALLS, ConfigApplied, Configure, DeviceInfo, EngineEvent,
                                    Error, ErrorKind, Generate, GuardResult, ModelInfo, RunDone,
                                    RunStarted, Status, Token)

from . import (catalogue, ceilings, generate, guard, heap, models, record, threads, tp,
               tp_placement, watch)
from .backends import Backend, backend_class
from .backends.hf import HfBackend
from .step_profile import StepProfiler
from . import spec as specs

Emit = Callable[[Any], None]
# the guard's reference: transformers as it comes (guard.BASELINE names it)
BASELINE_OPTS = {**catalogue.DEFAULTS, "attention": "eager", "kv": "dynamic", "compile": "off",
                 "backend": "hf"}
# where each step of a (re)load starts, as a fraction of the whole: the weights (on a first
# start, the embedded model's one-time conversion too) up to 70 %, then the guard's baseline,
# the device's ceilings, the backend and the guard; the fraction the Status events carry
START = {"weights": 0.70, "baseline": 0.70, "ceilings": 0.80, "backend": 0.88, "guard": 0.92}


class Engine:
    def __init__(self, emit: Emit, stop: threading.Event, ranks: tp.Ranks | None = None,
                 thread_plan: threads.ThreadPlan | None = None) -> None:
        self.send = emit
        self.stalls: list[tuple[int, int]] = []   # (start, end) ns of timed stalls, all runs
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
        self.backend: Backend | None = None   # what runs the current configuration
        self.placement: tp_placement.Placement | None = None   # every rank's device, from rank 0
        self.device = "cpu"        # this rank's own device (cuda:K of its placement)
        self._step: tuple[str, float | None] = ("", None)   # the long step now running
        watch.install(self.emit)
        heap.fix_mmap_threshold()   # before the first model: each unload then comes back down

    def emit(self, event: Any) -> None:
        """Sends an event; a timed stall (compile, capture, ...) is also kept for the metrics."""
        if (isinstance(event, EngineEvent) and event.kind in STALLS
                and event.duration_ms is not None):
            self.stalls.append((event.t_ns, event.t_ns + int(event.duration_ms * 1e6)))
            del self.stalls[:-256]
        self.send(event)

    # ---- configuration ------------------------------------------------------------------

    def configure(self, cfg: Configure) -> None:
        """Load the model, or apply a new configuration in place where the library allows.

        In place: attention implementation, SDPA backend, cache type, TunableOp (~ms).
        Reload: model, device, tp, and the axes whose unit says so (compile, dtype, backend:
        engine/optimizations/). Then the correctness guard runs, which for a compiled
        configuration is also its warm-up, reported as the compiling phase.
        """
        t0 = time.perf_counter()
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        spec = specs.resolve(cfg.model)
        opts = {**catalogue.DEFAULTS, **cfg.opts, "dtype": cfg.dtype}
        catalogue.check(opts, cfg.device)
        gpus = list(cfg.gpus) if cfg.gpus is not None else None
        if self.ranks.rank == 0:  # --tp: heads divisible, GPUs there; before anything loads
            tp_placement.check(spec, cfg.device, cfg.tp, opts)
            placement = tp_placement.place(cfg.device, cfg.tp, gpus)
        else:  # a follower: rank 0 placed it (Follower.receive wrote its device into cfg)
            placement = tp_placement.Placement([cfg.device])
        cfg = Configure(cfg.model, cfg.device, cfg.dtype, opts, cfg.tp, gpus)
        old = self.config
        cls = backend_class(opts)
        cls.check_model(spec)   # e.g. a .gguf for backend=vllm: refused before anything loads
        reload = (old is None or self.loaded is None or self.placement is None or
                  (old.model, old.tp) != (cfg.model, cfg.tp) or
                  self.placement.devices != placement.devices or
                  any(old.opts.get(a) != opts[a] for a in catalogue.RELOAD))
        if reload:
            self.config = None   # what ran is gone; nothing runs until this one is set up
            self._load(spec, cfg, placement, cls.own_tensor_parallel)
        else:
            self.ranks.mirror(cfg)  # followers run this same configure, in lockstep
        previous = self.backend
        if reload or type(previous) is not cls or not previous.takes_in_place(opts):
            with self._heartbeat("loading", f"setting up backend {cls.name}",
                                 START["backend"] if reload else None):
                self.backend = cls(self.loaded, opts, self.emit, cfg.tp)
        else:
            self.backend.apply(opts)
        self.config = cfg
        self._announce(cfg, reload, t0)
        try:
            self.guard = self._check(opts, START["guard"] if reload else None)
        except RuntimeError as e:
            # e.g. a pinned SDPA kernel that refuses this model's shapes (GQA, head size)
            _drop_frames(e)
            self.config = old if not reload else None
            if self.config is not None:
                self.backend = previous
                previous.apply(old.opts)
            what = " ".join(f"{k}={v}" for k, v in cfg.opts.items()
                            if v != catalogue.DEFAULTS.get(k))
            raise catalogue.OptionError(f"{what or 'this configuration'} failed on "
                                        f"{spec.name}: {_one_line(e)}") from None
        self.emit(self.guard)
        self.emit(Status("ready", f"{spec.name} on {', '.join(dict.fromkeys(self.loaded.devices))}"))

    def _load(self, spec: specs.ModelSpec, cfg: Configure, placement: tp_placement.Placement,
              own_tp: bool) -> None:
        """A fresh model (and followers to match cfg.tp), its guard baseline and ceilings.
        `own_tp`: the backend runs its own tensor parallelism (one unsharded copy here)."""
        self._unload()
        self.placement, self.device = placement, placement.devices[0]
        # rank 0 starts or ends followers to match cfg.tp (a follower keeps its group)
        self.ranks = tp.resize(self.ranks, 1 if own_tp else cfg.tp,
                               placement.devices[:1] if own_tp else placement.devices,
                               self._rank_lost)
        self.ranks.mirror(cfg)  # followers run this same configure from here on, in lockstep
        with self._heartbeat("loading", f"loading {spec.name} on {self.device}", 0.0):
            self.loaded = models.load(spec, self.device, cfg.dtype, "eager", self._load_progress,
                                      tp=1 if own_tp else cfg.tp,
                                      devices=self.ranks.devices(self.device))
        self.loaded.gpus, self.loaded.gpu_choice = placement.gpus, placement.why
        if own_tp:  # one copy here; the backend runs its own ranks, one on each device
            self.loaded.tp, self.loaded.devices = cfg.tp, list(placement.devices)
        with self._heartbeat("warming", "the correctness guard's baseline (eager attention)",
                             START["baseline"]):
            self.baseline = self._trace(HfBackend(self.loaded, BASELINE_OPTS, self.emit, cfg.tp))
        with self._heartbeat("warming", "the device's bandwidth and FLOP/s ceilings (measured "
                             "once per device and dtype, then cached)", START["ceilings"]):
            self.ceilings = ceilings.get(self.device, models.DTYPES[cfg.dtype], self.loaded.model)

    def _announce(self, cfg: Configure, reload: bool, t0: float) -> None:
        """ModelInfo, DeviceInfo and ConfigApplied: what now runs, where, and how it got there."""
        self.emit(ModelInfo(**self.loaded.info()))
        self.emit(DeviceInfo(self.device, self.ceilings["device_name"], self.ceilings["mem_bw_gb_s"],
                             self.ceilings["peak_tflops"],
                             catalogue.as_dict(catalogue.availability(cfg.device)),
                             torch.cuda.device_count() if torch.cuda.is_available() else 0,
                             threads=torch.get_num_threads(), cpus=threads.usable_cpus(),
                             threads_note=self.thread_plan.reason if self.thread_plan else ""))
        self.emit(ConfigApplied(cfg, "loaded" if reload else "in place",
                                time.perf_counter() - t0))

    def _check(self, opts: dict[str, str], progress: float | None = None) -> GuardResult:
        """The correctness guard on the check prompt (for a compiled configuration, its
        warm-up too, shown as the compiling phase)."""
        phase = "compiling" if opts["compile"] != "off" else "warming"
        if opts["gemm"] == "tunableop" and phase == "warming":
            phase = "tuning"
        tuning = self._tuning_watch()
        with self._heartbeat(phase, "correctness guard on the check prompt", progress):
            current = self._trace(self.backend, forced=self.baseline.ids)
        if tuning is not None:
            tuning.check("during the correctness check")
        return guard.compare(self.baseline, current)

    def _trace(self, backend: Backend, forced: list[int] | None = None) -> guard.Trace:
        """The check prompt through `backend`; `forced`: the baseline's ids, fed back after each
        step so that every step is compared in the baseline's context (engine/guard.py)."""
        tok, mcfg = self.loaded.tokenizer, self.loaded.model.config
        req = Generate(prompt=guard.CHECK_PROMPT if tok is not None else None,
                       prompt_len=None if tok is not None else 16,
                       max_new_tokens=guard.CHECK_TOKENS)
        inputs = generate.prepare(req, tok, mcfg.vocab_size, mcfg.max_position_embeddings,
                                  self.loaded.device)
        return backend.trace(inputs, guard.CHECK_TOKENS, forced)

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
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        gc.collect()
        heap.return_freed()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load_progress(self, detail: str, fraction: float | None) -> None:
        """A step of models.load (its fraction of the weights' share of the start-up)."""
        self._step = (detail, None if fraction is None else START["weights"] * fraction)
        self.emit(Status("loading", *self._step))

    @contextlib.contextmanager
    def _heartbeat(self, phase: str, detail: str, progress: float | None = None):
        """Status events every 0.5 s with elapsed time while a long step runs. Each repeats the
        latest step's words and (re)load fraction (a step inside may report its own), so a
        label is never replaced by a generic one half a second later."""
        done = threading.Event()
        t0 = time.perf_counter()
        self._step = (detail, progress)
        if progress is not None:   # a step of a (re)load says so at once
            self.emit(Status(phase, detail, progress))

        def beat() -> None:
            while not done.wait(0.5):
                self.emit(Status(phase, *self._step, time.perf_counter() - t0))

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
        loaded = self.loaded
        mcfg = loaded.model.config
        t0 = time.perf_counter_ns()
        try:
            inputs = generate.prepare(req, loaded.tokenizer, mcfg.vocab_size,
                                      mcfg.max_position_embeddings, self.device)
        except ValueError as e:
            self.emit(Error(ErrorKind.BAD_REQUEST, str(e)))
            return
        prepared_ns = time.perf_counter_ns() - t0
        with self._heartbeat("compiling", "graphs for this run's shapes"):
            self.backend.warm(req.batch, inputs.prompt_tokens, req.max_new_tokens)
        # the request starts with its tokenization; a warm-up of new graphs is not part of it
        start_ns = time.perf_counter_ns() - prepared_ns
        self.emit(RunStarted(req.run_id, inputs.prompts, inputs.prompt_tokens, req.batch,
                             req.max_new_tokens, start_ns))
        self.emit(Status("generating", f"run {req.run_id}"))
        gen = None
        if req.sample:
            gen = torch.Generator(device=self.device).manual_seed(req.seed)
        sampling = generate.Sampling(req.sample, req.temperature, req.top_p, req.top_k, gen)
        steps = self.backend.generate_steps(inputs, req.max_new_tokens, sampling,
                                            _eos_ids(loaded.model, loaded.tokenizer),
                                            req.ignore_eos, self.ranks.agree(self.stop.is_set))
        tokens, stamps, stopped = self._stream(req, steps, inputs.prompt_tokens, start_ns)
        if stamps and self.ranks.rank == 0:
            self.emit(RunDone(req.run_id, self._record(req, start_ns, inputs.prompt_tokens,
                                                       tokens, stamps, stopped)))
        self.emit(Status("ready", "error" if stopped in ("oom", "error") else ""))

    def _stream(self, req: Generate, steps: Any, prompt_tokens: int, start_ns: int
                ) -> tuple[list[list[dict[str, Any]]], list[int], str]:
        """Sends each step as a Token; returns every request's tokens, the stamps, and why
        the run stopped early ("" when it did not)."""
        stream = generate.Stream(self.loaded.tokenizer, req.batch)
        tokens: list[list[dict[str, Any]]] = [[] for _ in range(req.batch)]
        stamps: list[int] = []
        stopped = ""
        profiler = None
        tuning = self._tuning_watch()
        if req.profile_steps > 0 and self.ranks.rank == 0:
            profiler = StepProfiler(req.run_id, req.profile_steps, self.device, self.config.tp)
            profiler.start()
        try:
            for step in steps:
                texts = stream.push(step.ids)
                stamps.append(step.t_ns)
                for r, (tid, text, live) in enumerate(zip(step.ids, texts, step.live)):
                    if live:
                        tokens[r].append({"index": step.index, "id": tid, "text": text,
                                          "t_ns": step.t_ns})
                self.emit(Token(req.run_id, step.index, step.ids, texts, step.t_ns))
                if tuning is not None:
                    tuning.check(f"by token {step.index}",
                                 stamps[-2] if len(stamps) > 1 else start_ns)
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
                                           f"{prompt_tokens} tokens, after {len(stamps)} tokens"))
        except RuntimeError as e:
            stopped = "error"
            self.emit(Error(ErrorKind.RUNTIME, _one_line(e)))
        finally:
            if profiler is not None:  # the run ended before the profiled steps did
                self.emit(profiler.finish())
            if hasattr(steps, "close"):
                steps.close()   # frees the run's cache now, not at the next collection
            if stopped == "oom":
                gc.collect()
                torch.cuda.empty_cache()
        return tokens, stamps, stopped

    def _record(self, req: Generate, start_ns: int, prompt_tokens: int,
                tokens: list[list[dict[str, Any]]], stamps: list[int], stopped: str
                ) -> dict[str, Any]:
        """The run's versioned JSON record (engine/record.py), with its metrics and roofline."""
        cfg = self.config
        m = run_metrics.run_metrics(start_ns, stamps, req.batch, prompt_tokens,
                                    stalls=[s for s in self.stalls if s[1] > start_ns])
        rec = record.build(self.loaded.info(), asdict(cfg), asdict(req), tokens, m.to_dict(),
                           asdict(self.guard) if self.guard else {}, stopped)
        rec["start_ns"] = start_ns
        rec["kv_bytes_per_token"] = rec["model"]["kv_bytes_per_token"]
        rec.update(self.backend.run_info())
        # a run that beats a floor re-measures the ceiling (engine/ceilings.py), never >100 %
        roof, self.ceilings, events = ceilings.hold_floors(
            self.ceilings, m, rec["model"]["weight_bytes"], rec["kv_bytes_per_token"],
            self.loaded.model, self.device, models.DTYPES[cfg.dtype], ranks=cfg.tp)
        for event in events:
            self.emit(event)
        rec["ceilings"], rec["roofline"] = self.ceilings, asdict(roof)
        return rec


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


def _drop_frames(e: BaseException) -> None:
    """Clears the locals of every frame in `e`'s tracebacks (its causes' too): they hold the
    model the failed step ran, so an inductor failure in a compile=layers guard kept a whole
    model resident after the next reload (+280 MB each on the embedded model, measured by
    benchmarks/engine_memory.py --compile)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
