"""Optimizations on a live engine: in-place switches, the guard, compile events."""

from __future__ import annotations

import pytest

from llmtop.engine import catalogue
from llmtop.engine.protocol import (ConfigApplied, Configure, EngineEvent, Error, Generate,
                             GuardResult, RunDone, Token)

from ..conftest import wait_for

PROMPT = "The largest continent is"


def configure(client, **opts) -> tuple[ConfigApplied, GuardResult]:
    client.send(Configure(model="embedded", device="cpu", dtype=opts.pop("dtype", "bf16"),
                          opts=opts))
    applied = wait_for(client, lambda e: isinstance(e, (ConfigApplied, Error)), timeout=300)
    assert isinstance(applied, ConfigApplied), applied
    guard = wait_for(client, lambda e: isinstance(e, GuardResult), timeout=300)
    return applied, guard


def text_of(client, run_id: int) -> str:
    client.send(Generate(run_id=run_id, prompt=PROMPT, max_new_tokens=8))
    seen: list = []
    done = wait_for(client, lambda e: isinstance(e, RunDone), seen=seen)
    assert done.record["guard"]["baseline"] == "attention=eager kv=dynamic compile=off"
    return "".join(e.texts[0] for e in seen if isinstance(e, Token))


def test_every_cpu_option_produces_text_and_switches_in_place_under_a_second(engine_factory):
    client = engine_factory(Configure(model="embedded", device="cpu", dtype="fp32"))
    run_id = 0
    for attention in ("eager", "sdpa", "flash", "flex"):
        for kv in ("dynamic", "static"):
            applied, guard = configure(client, dtype="fp32", attention=attention, kv=kv)
            assert applied.how == "in place"
            assert applied.seconds < 1.0, (attention, kv, applied.seconds)
            run_id += 1
            assert text_of(client, run_id).strip()
            if (attention, kv) == ("flex", "static"):
                # transformers 5.24's own generate() gives these same wrong tokens on CPU:
                # the guard exists to catch exactly this
                assert guard.status == "diverged" and guard.diverged_at == 1, guard
                assert guard.max_logit_diff > 0.1
                assert guard.margin > 10 * guard.tolerance   # no rounding flip: a wrong kernel
                assert_matches_transformers_flex_static(client, run_id)
            else:  # fp32: every other kernel gives the baseline's greedy tokens
                assert guard.status == "identical", (attention, kv, guard)


def assert_matches_transformers_flex_static(client, run_id: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtop.engine import spec

    client.send(Generate(run_id=run_id + 100, prompt=PROMPT, max_new_tokens=12, ignore_eos=True))
    ours = [t["id"] for t in wait_for(client, lambda e: isinstance(e, RunDone)).record["tokens"][0]]
    folder = spec.embedded_cache()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="flex_attention")
    enc = tok(PROMPT, return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                         cache_implementation="static")
    assert ours == ref[0, enc["input_ids"].shape[1]:].tolist()


def test_guard_reports_where_bf16_kernels_diverge(engine):
    applied, guard = configure(engine, attention="eager")
    assert guard.status == "identical" and guard.max_logit_diff == 0.0
    applied, guard = configure(engine, attention="sdpa")
    assert guard.status in ("identical", "equivalent"), guard   # bf16 near-ties are no bug
    if guard.status == "equivalent":
        assert 0 <= guard.diverged_at < guard.tokens and guard.margin <= guard.tolerance
        assert 0 < guard.max_logit_diff < 5   # a near-tie flipped, not garbage
    else:
        assert guard.diverged_at is None


def test_unavailable_and_conflicting_options_are_refused_with_reasons(engine):
    for opts, reason in (({"attention": "mem_efficient"}, "needs a CUDA or ROCm GPU"),
                         ({"gemm": "tunableop"}, "TunableOp needs a CUDA or ROCm GPU"),
                         ({"kv": "paged", "attention": "flex"}, "not flex"),
                         ({"compile": "full", "kv": "dynamic"}, "requires kv=static")):
        engine.send(Configure(model="embedded", device="cpu", opts=opts))
        ev = wait_for(engine, lambda e: isinstance(e, Error))
        assert ev.kind == "config" and reason in ev.message, ev


def test_study_layer_compile_surfaces_the_recompile_limit(engine_factory):
    client = engine_factory()
    client.send(Configure(model="embedded", device="cpu", opts={"compile": "layers"}))
    seen: list = []
    wait_for(client, lambda e: isinstance(e, GuardResult), timeout=600, seen=seen)
    kinds = [e.kind for e in seen if isinstance(e, EngineEvent)]
    assert kinds.count("recompile") >= 7
    limit = [e for e in seen if isinstance(e, EngineEvent) and e.kind == "recompile_limit"]
    assert limit and "recompile_limit (8)" in limit[0].detail
    assert text_of(client, 1).strip()


def test_catalogue_names_are_the_only_names():
    assert catalogue.parse_opts([], "baseline")["attention"] == "eager"
    with pytest.raises(catalogue.OptionError, match="unknown axis"):
        catalogue.parse_opts(["speed=max"])
    both = catalogue.parse_opts(["backend=native,kv=static", "compile=full"])
    assert (both["backend"], both["kv"], both["compile"]) == ("native", "static", "full")
    assert set(catalogue.PRESETS) == {"baseline", "study", "max"}
    for preset in catalogue.PRESETS.values():
        for axis, value in preset.items():
            assert value in catalogue.AXES[axis]


def test_paged_kv_runs_in_a_live_engine_with_the_guard(engine_factory):
    client = engine_factory(Configure(model="embedded", device="cpu", dtype="fp32"))
    applied, guard = configure(client, dtype="fp32", attention="sdpa", kv="paged")
    assert applied.how == "in place"
    assert guard.status == "identical" and guard.max_logit_diff is None  # ids only
    client.send(Generate(run_id=1, prompt=PROMPT, max_new_tokens=8, batch=2, ignore_eos=True))
    done = wait_for(client, lambda e: isinstance(e, RunDone))
    rec = done.record
    assert rec["config"]["opts"]["kv"] == "paged" and rec["paged"]
    assert [t["id"] for t in rec["tokens"][0]] == [t["id"] for t in rec["tokens"][1]]
    assert rec["metrics"]["n_tokens"] == 8


def test_graph_watch_times_a_new_shapes_first_calls_only():
    """compile=full's decode step: the first call per shape is the compile (an event with its
    duration); on a CPU there is no graph to capture, so later calls pass straight through."""
    import torch

    from llmtop.engine.watch import GraphWatch

    events: list[EngineEvent] = []
    calls: list[tuple] = []

    def step(**kw):
        calls.append(tuple(kw["input_ids"].shape))
        return kw["input_ids"] + 1

    watched = GraphWatch(step, events.append)
    for batch in (1, 1, 1, 2):
        out = watched(input_ids=torch.zeros(batch, 1), attention_mask=torch.ones(batch, 256))
        assert out.shape == (batch, 1) and float(out.sum()) == batch
    assert calls == [(1, 1), (1, 1), (1, 1), (2, 1)]
    assert [e.kind for e in events] == ["compile", "compile"]
    assert "batch 1, cache 256" in events[0].detail and "batch 2" in events[1].detail
    assert events[0].detail.endswith(" ms")
