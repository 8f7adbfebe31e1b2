"""The vLLM adapter's contract, against tests/fakes/vllm (a fake mirroring vLLM's real API)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from llmtop.engine import generate
from llmtop.engine.backends import vllm as vllm_backend
from llmtop.engine.generate import Sampling

FAKE = Path(__file__).parent.parent / "fakes" / "vllm"


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` gives the fake package (its submodules load from its folder) until the
    test ends; whatever vllm modules were loaded before come back afterwards."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE.parent))   # the fake's tp workers import it (spawn)
    spec = importlib.util.spec_from_file_location("vllm", FAKE / "__init__.py",
                                                  submodule_search_locations=[str(FAKE)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vllm", module)
    spec.loader.exec_module(module)
    yield module
    for name in [m for m in sys.modules if m.startswith("vllm.")]:
        del sys.modules[name]


def greedy_reference(prompt: list[int], n: int) -> list[int]:
    """The fake model's greedy tokens, by its documented formula (independent of the fake)."""
    ctx, out = list(prompt), []
    for _ in range(n):
        t = 100 + (31 * sum(ctx[-8:]) + len(ctx)) % (32000 - 100)
        out.append(t)
        ctx.append(t)
    return out


PROMPTS = [[1, 450, 10487, 25523], [1, 15043, 29892, 590, 1024, 338], [1, 7], [1, 2, 3, 4, 5]]


def _dist_info(root: Path, version: str) -> None:
    """The metadata an installed vLLM wheel leaves (name and version), for importlib.metadata."""
    info = root / f"vllm-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")


@pytest.mark.parametrize("version, device_type", [("0.9.1", "cuda"), ("0.9.1+cu126", "cuda"),
                                                  ("0.9.1+cpu", "cpu"), ("0.9.1+rocm634", "rocm")])
def test_the_build_platform_is_read_from_metadata(tmp_path, monkeypatch, version, device_type):
    _dist_info(tmp_path, version)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert vllm_backend.build_platform() == device_type


def test_availability_says_why_without_importing_vllm(monkeypatch):
    for name in ("vllm", "vllm.platforms"):   # any import of vLLM would now raise ImportError
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(vllm_backend, "build_platform", lambda: "cuda")  # a CUDA wheel
    assert vllm_backend.vllm_available("cuda") == (True, "")
    ok, why = vllm_backend.vllm_available("cpu")
    assert not ok and why == "this vLLM is built for cuda, not the CPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = vllm_backend.vllm_available()
    assert not ok and "GPU" in why and "\n" not in why
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # not installed
    ok, why = vllm_backend.vllm_available()
    assert not ok and why == "vLLM not installed (pip install vllm)"


def test_the_running_platform_is_checked_when_backend_vllm_starts(fake_vllm, monkeypatch):
    from llmtop.engine.catalogue import OptionError

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cuda")  # a CUDA build of vLLM
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    vllm_backend.check_platform("cuda")
    with pytest.raises(OptionError, match="this vLLM is built for cuda, not the CPU"):
        vllm_backend.check_platform("cpu")


def test_engine_args_are_vllms(fake_vllm):
    eng = vllm_backend.VllmEngine("/models/llama", dtype="bf16", tensor_parallel_size=2,
                                  enforce_eager=True, max_model_len=4096,
                                  load_format="dummy")
    args = eng.engine.vllm_config
    assert type(args).__name__ == "EngineArgs"
    assert (args.model, args.dtype, args.tensor_parallel_size, args.enforce_eager,
            args.max_model_len, args.load_format) == ("/models/llama", "bfloat16", 2, True,
                                                      4096, "dummy")
    assert args.disable_log_stats
    with pytest.raises(ValueError, match="Unknown dtype"):
        vllm_backend.VllmEngine("m", dtype="int3")


def test_greedy_batch_streams_steps_like_the_dynamic_path(fake_vllm):
    eng = vllm_backend.VllmEngine("m")
    steps = list(eng.generate_steps(PROMPTS, 12, Sampling(), True, lambda: False))
    assert [s.index for s in steps] == list(range(12))
    for r, prompt in enumerate(PROMPTS):
        assert [s.ids[r] for s in steps] == greedy_reference(prompt, 12)
    assert all(all(s.live) for s in steps)
    assert all(isinstance(s, generate.Step) for s in steps)
    assert all(a.t_ns < b.t_ns for a, b in zip(steps, steps[1:]))
    assert not eng.engine.has_unfinished_requests()
    # the same engine serves the next batch (request ids do not collide)
    again = list(eng.generate_steps(PROMPTS[:1], 3, Sampling(), True, lambda: False))
    assert [s.ids for s in again] == [[t] for t in greedy_reference(PROMPTS[0], 3)]


def test_eos_ends_requests_and_live_follows_the_dynamic_path(fake_vllm):
    eng = vllm_backend.VllmEngine("m")
    # the fake answers EOS at index k for a prompt ending in 31000 + k
    prompts = [[1, 31002], [1, 31005], [1, 500]]
    steps = list(eng.generate_steps(prompts, 8, Sampling(), False, lambda: False))
    assert len(steps) == 8                          # row 2 never stops early
    assert [s.live for s in steps][:3] == [[True] * 3] * 3
    assert [s.live[0] for s in steps] == [True] * 3 + [False] * 5   # EOS itself is live
    assert [s.live[1] for s in steps] == [True] * 6 + [False] * 2
    assert steps[2].ids[0] == 2 and steps[5].ids[1] == 2
    assert all(s.ids[0] == 2 for s in steps[3:])    # ended rows repeat their last id
    # ignore_eos: generation goes on past EOS, whose successors are not live (as dynamic)
    steps = list(eng.generate_steps(prompts[:1], 6, Sampling(), True, lambda: False))
    assert len(steps) == 6 and steps[2].ids == [2] and steps[3].ids != [2]
    assert [s.live[0] for s in steps] == [True] * 3 + [False] * 3
    # all rows end on EOS: the stream ends there, as the dynamic path does
    steps = list(eng.generate_steps(prompts[:2], 50, Sampling(), False, lambda: False))
    assert len(steps) == 6


def test_sampling_params_mapping_and_seeds(fake_vllm):
    s = vllm_backend.sampling_params(Sampling(), 7, True)
    assert (s.temperature, s.max_tokens, s.ignore_eos, s.detokenize) == (0.0, 7, True, False)
    gen = torch.Generator().manual_seed(5)
    s = vllm_backend.sampling_params(Sampling(True, 0.8, 0.9, 40, gen), 7, False, row=2)
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (0.8, 0.9, 40, 7)
    s = vllm_backend.sampling_params(Sampling(True, 0.8, 1.0, 0, gen), 7, False)
    assert (s.top_p, s.top_k) == (1.0, -1)          # off, in the form every vLLM accepts
    eng = vllm_backend.VllmEngine("m")

    def run(seed: int) -> list[list[int]]:
        smp = Sampling(True, 1.0, 1.0, 0, torch.Generator().manual_seed(seed))
        return [s.ids for s in eng.generate_steps([PROMPTS[0]] * 2, 6, smp, True,
                                                  lambda: False)]
    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert [x[0] for x in a] != [x[1] for x in a]    # rows of one prompt differ


def test_stop_and_close_abort_unfinished_requests(fake_vllm):
    eng = vllm_backend.VllmEngine("m")
    seen = []
    steps = eng.generate_steps(PROMPTS, 100, Sampling(), True, lambda: len(seen) >= 3)
    for s in steps:
        seen.append(s)
    assert len(seen) == 3
    assert not eng.engine.has_unfinished_requests()
    assert len(eng.engine.aborted) == len(PROMPTS)
    # a consumer that walks away (closes the iterator) frees the engine too
    it = eng.generate_steps(PROMPTS, 100, Sampling(), True, lambda: False)
    next(it)
    it.close()
    assert not eng.engine.has_unfinished_requests()
    before = eng.engine.step_count
    list(eng.generate_steps(PROMPTS[:1], 2, Sampling(), True, lambda: False))
    # nothing stale is stepped any more: 2 tokens of one request, and the step that returns
    # nothing (async scheduling: the first step's outputs come with the second)
    assert eng.engine.step_count == before + 3
    eng.close()
    assert eng.engine is None


def test_the_engine_core_stays_in_process_over_a_users_setting(fake_vllm, monkeypatch):
    """A user's VLLM_ENABLE_V1_MULTIPROCESSING=1 would spawn vLLM's engine core from the
    daemonic engine process, which fails: it is overridden, and the record says so."""
    import os

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    eng = vllm_backend.VllmEngine("m")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    list(eng.generate_steps(PROMPTS[:1], 2, Sampling(), True, lambda: False))
    assert eng.last_run["notes"] == ["VLLM_ENABLE_V1_MULTIPROCESSING=1 overridden to 0: vLLM's "
                                     "engine core runs inside llmtop's engine process"]
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert vllm_backend.VllmEngine("m").notes == []


def test_a_gguf_model_is_refused_in_one_line(fake_vllm, tmp_path):
    """vLLM 0.26 has no GGUF loader: the fake refuses a .gguf model as vLLM does, and the
    adapter refuses it before, in one line (the embedded model goes as its converted folder)."""
    from types import SimpleNamespace

    from llmtop.engine.catalogue import OptionError
    from llmtop.engine.spec import ModelSpec

    with pytest.raises(ValueError, match="Invalid repository ID or local directory"):
        vllm_backend.VllmEngine(str(tmp_path / "model.gguf"))
    loaded = SimpleNamespace(spec=ModelSpec("gguf", "model.gguf", str(tmp_path / "model.gguf")))
    with pytest.raises(OptionError) as e:
        vllm_backend.model_source(loaded, tmp_path / "vllm")
    assert "no GGUF loader" in str(e.value) and "\n" not in str(e.value)


def test_a_gguf_model_is_refused_before_anything_loads(fake_vllm):
    import threading

    from llmtop.engine import spec as specs
    from llmtop.engine.catalogue import OptionError
    from llmtop.engine.protocol import Configure
    from llmtop.engine.runner import Engine

    engine = Engine(lambda e: None, threading.Event())
    with pytest.raises(OptionError, match="vLLM 0.26 has no GGUF loader"):
        engine.configure(Configure(model=str(specs.embedded_gguf()), device="cpu",
                                   dtype="fp32", opts={"backend": "vllm"}))
    assert engine.loaded is None


def test_arguments_vllm_0_26_removed_are_refused_by_the_fake(fake_vllm):
    for removed in ("swap_space", "max_seq_len_to_capture"):
        with pytest.raises(TypeError):
            vllm_backend.VllmEngine("m", **{removed: 4})


def test_prefix_caching_is_off_so_a_repeat_prefills_again(fake_vllm):
    """bench repeats one seeded prompt: with vLLM's default (prefix caching on) every run after
    the warm-up would prefill only its last block, and its TTFT would be a cache hit."""
    prompt = [1] + [200 + i for i in range(99)]

    def first_step_tokens(eng) -> list[int]:
        out = []
        for _ in range(2):
            before = len(eng.engine.scheduled)
            list(eng.generate_steps([prompt], 3, Sampling(), True, lambda: False))
            out.append(eng.engine.scheduled[before])
        return out

    assert first_step_tokens(vllm_backend.VllmEngine("m")) == [100, 100]
    # vLLM's default, which the adapter overrides: the repeat reuses 6 of its 16-token blocks
    assert first_step_tokens(vllm_backend.VllmEngine("m", enable_prefix_caching=None)) == [100, 4]


def test_stamps_and_ttft_under_async_steps_and_chunked_prefill(fake_vllm, monkeypatch):
    """vLLM's first step() after add_request returns nothing, and a prefill over its token
    budget is chunked, so rows get their first token at different steps: each token is stamped
    at the step that delivered it, and index k is yielded once every row has it."""
    eng = vllm_backend.VllmEngine("m", max_num_batched_tokens=2048)   # vLLM's own default
    clock = iter(range(1, 1000))
    monkeypatch.setattr(vllm_backend.time, "perf_counter_ns", lambda: 1000 * next(clock))
    prompts = [[1] + [300 + r + i for i in range(999)] for r in range(4)]
    steps = list(eng.generate_steps(prompts, 4, Sampling(), True, lambda: False))
    # step 1: rows 0, 1 and 48 tokens of row 2; step 2: decodes 0, 1 and prefills 2, 3; each
    # step's tokens come back with the next step
    assert eng.engine.scheduled[:3] == [2048, 2 + 952 + 1000, 4]
    assert [s.t_ns for s in steps] == [3000, 4000, 5000, 6000]
    assert steps[0].host_t_ns == [2000, 2000, 3000, 3000]
    assert steps[1].host_t_ns == [3000, 3000, 4000, 4000]
    for r, prompt in enumerate(prompts):
        assert [s.ids[r] for s in steps] == greedy_reference(prompt, 4)
    assert eng.last_run["prefill_chunked"] is True


def test_the_scheduler_budget_holds_a_long_batch_in_one_prefill(fake_vllm):
    """vLLM's LLMEngine defaults (2048 tokens, 128 sequences) would prefill --batch 8
    --prompt-len 2048 over 8 steps; the adapter sizes the budget so that it is one, and the
    record says when a batch is beyond it."""
    eng = vllm_backend.VllmEngine("m", max_model_len=4096)
    prompts = [[1] + [400 + r] * 2047 for r in range(8)]
    steps = list(eng.generate_steps(prompts, 2, Sampling(), True, lambda: False))
    assert eng.engine.scheduled[0] == 8 * 2048 and len(steps) == 2
    assert eng.last_run == {"max_num_batched_tokens": 16384, "max_num_seqs": 256,
                            "prefix_caching": False, "prefill_chunked": False, "notes": []}
    list(eng.generate_steps(prompts + prompts[:1], 1, Sampling(), True, lambda: False))
    assert eng.last_run["prefill_chunked"] is True


def test_a_refused_row_aborts_the_rows_queued_before_it(fake_vllm):
    """vLLM refuses a prompt of max_model_len tokens (no room for one); the rows of that batch
    already added must not run on into the next run."""
    eng = vllm_backend.VllmEngine("m", max_model_len=64)
    with pytest.raises(ValueError, match="plus the number of requested output tokens"):
        list(eng.generate_steps([[1, 5], [1, 6], [1] * 64], 3, Sampling(), True, lambda: False))
    assert not eng.engine.has_unfinished_requests()
    assert eng.engine.aborted == ["llmtop-0-0", "llmtop-0-1"]
    steps = list(eng.generate_steps([[1, 7]], 2, Sampling(), True, lambda: False))
    assert [s.ids for s in steps] == [[t] for t in greedy_reference([1, 7], 2)]


def test_a_temperature_above_2_is_refused_before_any_backend(fake_vllm):
    """vLLM raises above 2; every backend refuses it up front, so rows stay comparable."""
    from llmtop.engine.generate import prepare
    from llmtop.engine.protocol import Generate

    with pytest.raises(ValueError, match="temperature must be in"):
        vllm_backend.sampling_params(Sampling(True, 2.5), 4, False)   # what vLLM would say
    with pytest.raises(ValueError, match=r"temperature must be in \(0, 2\], got 2.5"):
        prepare(Generate(prompt_len=4, max_new_tokens=4, sample=True, temperature=2.5), None,
                1000, 64, "cpu")
    prepare(Generate(prompt_len=4, max_new_tokens=4, sample=True, temperature=2.0), None, 1000,
            64, "cpu")


def test_the_gpus_placed_are_the_gpus_vllm_runs_on(fake_vllm, monkeypatch, tmp_path):
    """vLLM would run on its platform's GPU 0 while llmtop's ceilings, telemetry and guard
    use --device cuda:K / --gpus: the backend passes the placed devices as device_ids."""
    from types import SimpleNamespace

    from llmtop.engine.spec import ModelSpec

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = torch.nn.Linear(2, 2)
    loaded = SimpleNamespace(spec=ModelSpec("hf_dir", "llama", str(tmp_path)), model=model,
                             device="cuda:2", devices=["cuda:2", "cuda:3"], dtype="bf16")
    backend = vllm_backend.VllmBackend(loaded, {}, lambda e: None, tp=2)
    try:
        args = backend.engine.engine.vllm_config
        assert (args.device_ids, args.tensor_parallel_size, args.model) == ([2, 3], 2, str(tmp_path))
    finally:
        backend.close()


def test_a_cpu_build_runs_on_the_cpu_only(fake_vllm, monkeypatch):
    from llmtop.engine.catalogue import OptionError

    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    vllm_backend.check_platform("cpu")
    with pytest.raises(OptionError, match="this vLLM is built for cpu, not CUDA/ROCm"):
        vllm_backend.check_platform("cuda")
    monkeypatch.setattr(vllm_backend, "build_platform", lambda: "cpu")
    ok, why = vllm_backend.vllm_available("cuda")
    assert not ok and why == "this vLLM is built for cpu, not CUDA/ROCm"


def test_backend_vllm_behind_the_engine_interface(tmp_path, monkeypatch, engine_factory):
    """A real engine process with (fake) vLLM installed: backend=vllm is selectable, the guard
    compares vLLM's greedy ids with the transformers baseline, runs stream Token events with
    stamps and end in the same record; switching back reloads transformers."""
    from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, Error, Generate,
                                 GuardResult, RunDone, Token)

    from ..conftest import wait_for

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "vllm").symlink_to(FAKE, target_is_directory=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # the spawned engine inherits sys.path
    engine = engine_factory(Configure(model="synthetic:tiny", device="cpu", dtype="fp32"))
    engine.send(Configure(model="synthetic:tiny", device="cpu", dtype="fp32",
                          opts={"backend": "vllm", "compile": "full", "kv": "static"}))
    refused = wait_for(engine, lambda e: isinstance(e, Error))
    assert refused.kind == "config" and "backend=vllm" in refused.message
    engine.send(Configure(model="synthetic:tiny", device="cpu", dtype="fp32",
                          opts={"backend": "vllm"}))
    seen: list = []
    guard = wait_for(engine, lambda e: isinstance(e, (GuardResult, Error)), timeout=300, seen=seen)
    assert isinstance(guard, GuardResult), guard
    info = next(e for e in seen if isinstance(e, DeviceInfo))
    assert info.options["backend"]["vllm"]["ok"]
    applied = next(e for e in seen if isinstance(e, ConfigApplied))
    assert applied.config.opts["backend"] == "vllm" and applied.how == "loaded"
    # the fake's formula is not tiny's random weights: the guard must say where they part
    assert guard.status == "diverged" and guard.diverged_at == 0
    engine.send(Generate(run_id=1, prompt_len=12, batch=3, max_new_tokens=6, ignore_eos=True))
    run: list = []
    done = wait_for(engine, lambda e: isinstance(e, (RunDone, Error)), timeout=120, seen=run)
    assert isinstance(done, RunDone), done
    tokens = [e for e in run if isinstance(e, Token)]
    assert len(tokens) == 6 and all(len(t.ids) == 3 for t in tokens)
    assert all(a.t_ns <= b.t_ns for a, b in zip(tokens, tokens[1:]))
    assert done.record["config"]["opts"]["backend"] == "vllm"
    assert done.record["vllm"] == {"max_num_batched_tokens": 16384, "max_num_seqs": 256,
                                   "prefix_caching": False, "prefill_chunked": False,
                                   "notes": []}
    assert done.record["metrics"]["n_tokens"] == 6 and len(done.record["tokens"]) == 3
    ids = [t["id"] for t in done.record["tokens"][0]]
    assert ids[1:] != ids[:-1]  # the fake's tokens, not a repeated pad
    engine.send(Configure(model="synthetic:tiny", device="cpu", dtype="fp32",
                          opts={"backend": "hf", "attention": "eager"}))
    back = wait_for(engine, lambda e: isinstance(e, (GuardResult, Error)), timeout=300)
    assert isinstance(back, GuardResult) and back.status == "identical", back


ENGINE_PROBE = """
import sys, threading
from llmtop.engine.protocol import Configure, DeviceInfo, GuardResult
from llmtop.engine.runner import Engine
seen = []
Engine(seen.append, threading.Event()).configure(Configure(model="synthetic:tiny", device="cpu"))
info = next(e for e in seen if isinstance(e, DeviceInfo))
assert any(isinstance(e, GuardResult) for e in seen)
print(info.options["backend"]["vllm"]["ok"], sorted(m for m in sys.modules if m.split(".")[0] == "vllm"))
"""


def test_an_hf_engine_never_imports_vllm(tmp_path):
    """#15.5: importing vLLM switches cuDNN attention off process-wide and sets inductor and
    NVML variables, so an engine running backend=hf must not import it, even to ask whether
    backend=vllm is available (the fake vllm is importable here, and counted available)."""
    import os
    import subprocess

    (tmp_path / "vllm").symlink_to(FAKE, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", ENGINE_PROBE], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[-2:] == ["True", "[]"], p.stdout


OWNER = """
import sys, time
from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import Configure, Error, GuardResult, ModelInfo
client = EngineClient(log_path=sys.argv[1])
client.start()
client.send(Configure(model="synthetic:tiny", device="cpu", dtype="fp32", tp=2,
                      opts={"backend": "vllm"}))
tp = None
while True:
    event = client.get(timeout=300)
    if isinstance(event, ModelInfo):
        tp = (event.tp, event.devices)
    if isinstance(event, (GuardResult, Error)):
        break
print(type(event).__name__, client.pid, tp, getattr(event, "message", ""), flush=True)
if sys.argv[2] == "close":
    client.close()
    print("closed", flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Whether a process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["owner killed", "close"])
def test_vllm_tp_workers_never_outlive_the_engines_owner(tmp_path, how):
    """backend=vllm --tp 2: vLLM starts a worker a rank from the (daemonic) engine process,
    which multiprocessing refuses unless the engine lifts its flag for it. The engine still
    never outlives its owner, nor the workers the engine: SIGKILL the owner (the dashboard),
    or close the client, and every process of the group is gone within seconds."""
    import os
    import signal
    import subprocess
    import time

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "vllm").symlink_to(FAKE, target_is_directory=True)
    pids_file = tmp_path / "workers"
    env = {**os.environ, "FAKE_VLLM_WORKER_PIDS": str(pids_file),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "engine.log"),
                              "close" if how == "close" else "stay"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        kind, engine_pid, tp = owner.stdout.readline().split(maxsplit=2)
        assert kind == "GuardResult", tp
        assert tp.strip() == "(2, ['cpu', 'cpu'])"   # what ModelInfo says runs
        workers = [int(p) for p in pids_file.read_text().split()]
        assert len(workers) == 2
        if how == "close":
            assert owner.stdout.readline().strip() == "closed"
        else:
            assert not any(_gone(p) for p in [int(engine_pid), *workers])
            owner.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                _gone(p) for p in [int(engine_pid), *workers]):
            time.sleep(0.1)
        assert all(_gone(p) for p in [int(engine_pid), *workers])
    finally:
        owner.kill()
        owner.wait()
