"""backend=native on the CPU, fp32: its greedy ids against the hf path's, paged against static,
tensor parallelism (2 gloo ranks) against one rank, and its one-line refusals."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from llmtop.engine import generate, models
from llmtop.engine import spec as specs
from llmtop.engine.backends.native import NativeBackend
from llmtop.engine.generate import Sampling
from llmtop.engine.native.model import NativeUnsupported
from llmtop.engine.protocol import EngineEvent, Generate

TOKENS = 64
CONTEXT = 256   # the KV cache's length in these tests (the models' own is 4096 / 8192)


def load(name: str) -> models.Loaded:
    return models.load(specs.resolve(name), "cpu", "fp32", "sdpa", lambda *a: None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine a 2-thread team is slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedded() -> models.Loaded:
    return load("embedded")


@pytest.fixture(scope="module")
def tiny() -> models.Loaded:
    return load("synthetic:tiny")


def inputs_for(loaded: models.Loaded, prompt: str | None = None, prompt_len: int | None = None,
               batch: int = 1, max_new: int = TOKENS) -> generate.Inputs:
    req = Generate(prompt=prompt, prompt_len=prompt_len, batch=batch, max_new_tokens=max_new)
    cfg = loaded.model.config
    return generate.prepare(req, loaded.tokenizer, cfg.vocab_size, cfg.max_position_embeddings,
                            "cpu")


def hf_ids(loaded: models.Loaded, inputs: generate.Inputs, n: int = TOKENS) -> list[list[int]]:
    from transformers import DynamicCache

    cache = DynamicCache(config=loaded.model.config)
    steps = generate.run(loaded.model, inputs, n, Sampling(), cache, set(), True, lambda: False)
    return [s.ids for s in steps]


def native_ids(backend: NativeBackend, inputs: generate.Inputs, n: int = TOKENS) -> list[list[int]]:
    steps = backend.generate_steps(inputs, n, Sampling(), set(), True, lambda: False)
    return [s.ids for s in steps]


def backend(loaded: models.Loaded, events: list | None = None, **opts: str) -> NativeBackend:
    sink = events.append if events is not None else (lambda e: None)
    return NativeBackend(loaded, {"kv": "static", "compile": "off", "attention": "sdpa", **opts},
                         sink, max_batch=4, context=CONTEXT)


def test_embedded_greedy_equals_hf_over_64_tokens(embedded):
    inputs = inputs_for(embedded, prompt="The largest continent is")
    reference = hf_ids(embedded, inputs)
    assert native_ids(backend(embedded), inputs) == reference


def test_tiny_greedy_equals_hf_over_64_tokens_batch_2(tiny):
    inputs = inputs_for(tiny, prompt_len=24, batch=2)
    reference = hf_ids(tiny, inputs)
    assert len({tuple(step) for step in reference}) > 1   # the ids move: the check can fail
    assert native_ids(backend(tiny), inputs) == reference


def test_weights_are_moved_not_copied(tiny):
    """The transformers modules are re-pointed at the fused matrices: one copy of each."""
    native = backend(tiny)
    att = tiny.model.model.layers[0].self_attn
    fused = native.model.layers[0].wqkv
    assert att.q_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert att.v_proj.weight.data_ptr() > fused.data_ptr()


def test_paged_equals_static_with_mixed_lengths_and_reserves_less(tiny):
    inputs = inputs_for(tiny, prompt_len=60, batch=3, max_new=40)
    inputs.attention_mask[0, :45] = 0      # left padding: prompts of 15, 60 and 60 tokens
    inputs.attention_mask[2, :30] = 0      # and 30
    static = backend(tiny)
    paged = NativeBackend(tiny, {"kv": "paged", "compile": "off", "attention": "sdpa"},
                          lambda e: None, max_batch=4, context=CONTEXT, page_size=8)
    reference = native_ids(static, inputs, 40)
    assert len({step[0] for step in reference}) > 1
    assert native_ids(paged, inputs, 40) == reference
    s, p = static.run_info(), paged.run_info()
    assert p["kv"] == "paged" and p["kv_page_tokens"] == 8
    per_token = models.kv_bytes_per_token(tiny.model)   # the engine's one figure
    assert p["kv_used_bytes"] == s["kv_used_bytes"] == (15 + 60 + 30 + 3 * 39) * per_token
    assert s["kv_used_bytes"] <= p["kv_reserved_bytes"] < s["kv_reserved_bytes"]


@pytest.mark.parametrize("attention", ["math", "flash", "flex"])
def test_pinned_prefill_attention_gives_the_same_ids(tiny, attention):
    inputs = inputs_for(tiny, prompt_len=16, max_new=8)
    assert native_ids(backend(tiny, attention=attention), inputs, 8) == hf_ids(tiny, inputs, 8)


def test_trace_gives_logits_matching_hf(embedded):
    from llmtop.engine import guard
    from llmtop.engine.backends.hf import HfBackend

    inputs = inputs_for(embedded, prompt=guard.CHECK_PROMPT, max_new=guard.CHECK_TOKENS)
    hf = HfBackend(embedded, {"attention": "eager", "kv": "dynamic", "compile": "off"},
                   lambda e: None)
    reference = hf.trace(inputs, guard.CHECK_TOKENS)
    ours = backend(embedded).trace(inputs, guard.CHECK_TOKENS)
    result = guard.compare(reference, ours)
    assert result.status == "identical", result
    assert result.max_logit_diff is not None and result.max_logit_diff < 1e-3


ROPE = {
    "llama3": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 256},   # attention scaling != 1
}


def scaled_rope_model(rope: dict) -> models.Loaded:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                      max_position_embeddings=1024, rope_parameters=rope)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return models.Loaded(model, None, specs.ModelSpec("synthetic", "rope"), "cpu", "fp32")


@pytest.mark.parametrize("rope", sorted(ROPE))
def test_scaled_rope_equals_hf_past_the_original_context(rope):
    """Each type's frequencies (and YaRN's attention scaling) change these ids: with the
    default rotary table instead, all three differ from hf's (checked when written)."""
    loaded = scaled_rope_model(ROPE[rope])
    inputs = inputs_for(loaded, prompt_len=170, max_new=32)
    assert native_ids(backend(loaded), inputs, 32) == hf_ids(loaded, inputs, 32)


def test_dynamic_rope_is_refused():
    loaded = scaled_rope_model({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(NativeUnsupported, match="rope type 'dynamic'"):
        backend(loaded)


def test_compile_full_on_cpu_is_refused_with_its_reason(tiny):
    events: list = []
    with pytest.raises(NativeUnsupported, match="CUDA graphs, which need a CUDA device"):
        backend(tiny, events, compile="full")
    assert not [e for e in events if isinstance(e, EngineEvent)]


@pytest.mark.parametrize("opts, reason", [
    ({"kv": "dynamic"}, "kv=static and kv=paged"),
    ({"compile": "layers"}, "not compile=layers"),
    ({"attention": "flash_attention_2"}, "SDPA or flex"),
])
def test_unsupported_options_are_refused_in_one_line(tiny, opts, reason):
    with pytest.raises(NativeUnsupported, match=reason) as err:
        backend(tiny, **opts)
    assert "\n" not in str(err.value)


def test_a_model_it_cannot_run_is_refused(tiny):
    class Other:
        config = type("Cfg", (), {"model_type": "mistral"})()

    fake = models.Loaded(Other(), None, tiny.spec, "cpu", "fp32")
    with pytest.raises(NativeUnsupported, match="Llama-architecture models; this one is 'mistral'"):
        backend(fake)


def test_tp_that_does_not_divide_the_heads_is_refused(tiny):
    with pytest.raises(NativeUnsupported, match="--tp 3 must divide the 8 attention heads"):
        NativeBackend(tiny, {"kv": "static"}, lambda e: None, max_batch=1, context=CONTEXT, tp=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tp_rank(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        loaded = load("synthetic:tiny")   # same seed on every rank: the weights of --tp 1
        inputs = inputs_for(loaded, prompt_len=20, batch=2, max_new=32)
        for kv in ("static", "paged"):
            native = NativeBackend(loaded, {"kv": kv}, lambda e: None, max_batch=2,
                                   context=CONTEXT, page_size=16, tp=world, tp_rank=rank)
            out[(rank, kv)] = native_ids(native, inputs, 32)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_tp2_gloo_equals_tp1(tiny):
    """Two gloo ranks, each a whole model sliced by native (heads 8 / KV heads 4 per 2)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_tp_rank, args=(2, free_port(), out), nprocs=2, join=True)
        ranks = dict(out)
    reference = native_ids(backend(tiny), inputs_for(tiny, prompt_len=20, batch=2, max_new=32), 32)
    for kv in ("static", "paged"):
        assert ranks[(0, kv)] == ranks[(1, kv)] == reference
