"""The engine as a real process on the real embedded model."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from llmtop.engine.protocol import Configure, Error, Generate, RunDone, Stop, Token

from ..conftest import wait_for

PROMPT = "The largest continent is"


def run(engine, request: Generate, timeout: float = 180) -> tuple[list[Token], dict]:
    engine.send(request)
    seen: list = []
    done = wait_for(engine, lambda e: isinstance(e, (RunDone, Error)), timeout, seen)
    assert isinstance(done, RunDone), done
    return [e for e in seen if isinstance(e, Token)], done.record


def test_greedy_tokens_equal_transformers_generate(engine):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtop.engine import spec

    tokens, record = run(engine, Generate(run_id=1, prompt=PROMPT, max_new_tokens=24,
                                          ignore_eos=True))
    ours = [t["id"] for t in record["tokens"][0]]
    folder = spec.embedded_cache()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    enc = tok(PROMPT, return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=24, do_sample=False, min_new_tokens=24)
    assert ours == ref[0, enc["input_ids"].shape[1]:].tolist()
    # streamed while produced: one Token event per step, stamps strictly increasing
    assert [t.index for t in tokens] == list(range(24))
    assert all(a.t_ns < b.t_ns for a, b in zip(tokens, tokens[1:]))
    text = "".join(t.texts[0] for t in tokens)
    assert text == tok.decode(ours, skip_special_tokens=True)
    assert "Antarctica" in text or "Asia" in text  # real English from a real model


def test_metrics_identity_holds_on_a_real_run(engine):
    _, record = run(engine, Generate(run_id=2, prompt=PROMPT, max_new_tokens=12, ignore_eos=True))
    m = record["metrics"]
    assert m["n_tokens"] == 12
    assert math.isclose(m["e2e_ms"], m["ttft_ms"] + m["tpot_ms"] * (m["n_tokens"] - 1),
                        rel_tol=1e-9)
    stamps = [t["t_ns"] for t in record["tokens"][0]]
    assert math.isclose(m["ttft_ms"], (stamps[0] - record["start_ns"]) / 1e6)
    assert math.isclose(m["tpot_ms"], (stamps[-1] - stamps[0]) / 1e6 / 11)
    assert record["schema"] == "llmtop.run/1"
    assert record["model"]["name"] == "SmolLM2-135M-Instruct" and not record["model"]["synthetic"]
    assert record["config"]["opts"]["attention"] == "sdpa"
    assert record["versions"]["torch"] and record["machine"]["cpu_count"]


def test_batch_rows_match_batch_one_and_sampling_is_seeded(engine):
    _, single = run(engine, Generate(run_id=3, prompt=PROMPT, max_new_tokens=8, ignore_eos=True))
    _, batched = run(engine, Generate(run_id=4, prompt=PROMPT, max_new_tokens=8, batch=2,
                                      ignore_eos=True))
    ids = lambda rec, r: [t["id"] for t in rec["tokens"][r]]  # noqa: E731
    assert ids(batched, 0) == ids(batched, 1) == ids(single, 0)
    assert batched["metrics"]["batch"] == 2
    a = run(engine, Generate(run_id=5, prompt=PROMPT, max_new_tokens=12, sample=True, seed=1,
                             temperature=1.5, top_p=1.0))[1]
    b = run(engine, Generate(run_id=6, prompt=PROMPT, max_new_tokens=12, sample=True, seed=1,
                             temperature=1.5, top_p=1.0))[1]
    c = run(engine, Generate(run_id=7, prompt=PROMPT, max_new_tokens=12, sample=True, seed=2,
                             temperature=1.5, top_p=1.0))[1]
    assert ids(a, 0) == ids(b, 0)
    assert ids(a, 0) != ids(c, 0)


def test_chat_messages_and_synthetic_prompt_length(engine):
    tokens, record = run(engine, Generate(run_id=8, messages=[
        {"role": "user", "content": "Name the largest continent."}], max_new_tokens=10))
    assert "user" in record["request"]["messages"][0]["role"]
    assert "".join(t.texts[0] for t in tokens).strip()
    _, record = run(engine, Generate(run_id=9, prompt_len=100, max_new_tokens=4, ignore_eos=True))
    assert record["metrics"]["prompt_tokens"] == 100


def test_prompt_longer_than_context_is_one_clear_error_and_engine_lives(engine):
    engine.send(Generate(run_id=10, prompt_len=8190, max_new_tokens=8))
    ev = wait_for(engine, lambda e: isinstance(e, Error))
    assert ev.kind == "bad_request" and "exceeds the model's context of 8192" in ev.message
    assert "\n" not in ev.message
    _, record = run(engine, Generate(run_id=11, prompt=PROMPT, max_new_tokens=3))
    assert record["metrics"]["n_tokens"] == 3


def test_stop_ends_a_run_early_and_keeps_its_tokens(engine):
    engine.send(Generate(run_id=12, prompt=PROMPT, max_new_tokens=200, ignore_eos=True))
    wait_for(engine, lambda e: isinstance(e, Token) and e.index == 2)
    engine.send(Stop())
    done = wait_for(engine, lambda e: isinstance(e, RunDone))
    assert done.record["stopped"] == "stop"
    assert 3 <= done.record["metrics"]["n_tokens"] < 200


def test_unavailable_option_is_refused_with_its_reason(engine):
    engine.send(Configure(model="embedded", device="cpu", opts={"attention": "cudnn"}))
    ev = wait_for(engine, lambda e: isinstance(e, Error))
    assert ev.kind == "config" and "needs a CUDA or ROCm GPU" in ev.message
    _, record = run(engine, Generate(run_id=13, prompt=PROMPT, max_new_tokens=2))
    assert record["config"]["opts"]["attention"] == "sdpa"  # the old configuration still runs


def test_killed_worker_is_reported_within_a_second(engine_factory):
    client = engine_factory()
    client.send(Generate(run_id=1, prompt=PROMPT, max_new_tokens=500, ignore_eos=True))
    wait_for(client, lambda e: isinstance(e, Token))
    os.kill(client.pid, signal.SIGKILL)
    t0 = time.monotonic()
    # this thread reaps while the client's reader does: both must read the same exit code
    # (two joins of one process race in multiprocessing: CPython gh-130895)
    assert client.wait_exit(5) == -signal.SIGKILL
    ev = wait_for(client, lambda e: isinstance(e, Error) and e.kind == "engine_dead", timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert "killed by signal 9" in ev.message


def test_synthetic_tiny_is_built_and_labelled(engine_factory):
    client = engine_factory(Configure(model="synthetic:tiny", device="cpu", dtype="bf16"))
    client.send(Generate(run_id=1, prompt_len=32, max_new_tokens=6, ignore_eos=True))
    done = wait_for(client, lambda e: isinstance(e, RunDone))
    assert done.record["model"]["synthetic"] is True
    assert done.record["model"]["layers"] == 4 and done.record["model"]["heads"] == 8
    assert done.record["model"]["dtype"] == "bf16"
    assert done.record["metrics"]["n_tokens"] == 6


def test_step_profile_on_demand_only(engine):
    import json

    from llmtop.engine.protocol import StepProfile

    engine.send(Generate(run_id=20, prompt=PROMPT, max_new_tokens=6, ignore_eos=True,
                         profile_steps=3))
    seen: list = []
    wait_for(engine, lambda e: isinstance(e, RunDone), seen=seen)
    profiles = [e for e in seen if isinstance(e, StepProfile)]
    assert len(profiles) == 1
    p = profiles[0]
    assert p.steps == 4 and p.device == "cpu"      # the prefill and 3 decode steps
    assert abs(p.busy_ms + p.idle_ms - p.step_ms) < 1e-6 * max(1.0, p.step_ms) + 1e-3
    assert 0 < p.busy_ms <= p.step_ms
    assert any(k["name"] in ("aten::mm", "aten::addmm", "aten::linear") for k in p.top_kernels[:3])
    trace = json.load(open(p.trace_path))
    assert trace["traceEvents"]
    engine.send(Generate(run_id=21, prompt=PROMPT, max_new_tokens=3))
    seen = []
    wait_for(engine, lambda e: isinstance(e, RunDone), seen=seen)
    assert not [e for e in seen if isinstance(e, StepProfile)]  # normal runs pay nothing


def test_a_load_reports_each_step_with_a_rising_fraction():
    """18.5: a (re)load says which step runs, with its share of the whole, from the weights to
    the guard; none of its events is a bare heartbeat with no fraction."""
    from llmtop.engine.client import EngineClient
    from llmtop.engine.protocol import GuardResult, Status

    client = EngineClient()
    client.start()
    try:
        client.send(Configure(model="synthetic:tiny", device="cpu"))
        seen: list = []
        wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), 300, seen)
        steps = [e for e in seen if isinstance(e, Status) and e.phase in ("loading", "warming")]
        fractions = [e.progress for e in steps]
        assert None not in fractions, [(e.detail, e.progress) for e in steps]
        assert fractions == sorted(fractions) and fractions[0] < 0.2 and fractions[-1] >= 0.9
        words = " ".join(e.detail for e in steps)
        for step in ("random weights", "guard's baseline", "ceilings", "correctness guard"):
            assert step in words, words
    finally:
        client.close()


def test_heartbeat_repeats_the_running_step_not_its_own_label():
    """The label of a step inside a long one (a conversion inside the load) survives the
    heartbeat, with its fraction and the elapsed time."""
    import threading

    from llmtop.engine.protocol import Status
    from llmtop.engine.runner import START, Engine

    events: list = []
    engine = Engine(events.append, threading.Event())
    with engine._heartbeat("loading", "loading the model", 0.0):
        engine._load_progress("first start only: dequantizing", 0.5)
        time.sleep(0.7)
    beat = [e for e in events if isinstance(e, Status) and e.elapsed_s]
    assert beat and beat[-1].detail == "first start only: dequantizing"
    assert beat[-1].progress == START["weights"] * 0.5


def test_shutdown_ends_a_running_generation_without_waiting_for_it(engine_factory):
    """A quit must not wait for a 500-token run to finish (17.7)."""
    from llmtop.engine.protocol import Shutdown

    client = engine_factory(Configure(model="synthetic:tiny", device="cpu"))
    client.send(Generate(run_id=1, prompt_len=16, max_new_tokens=4000, ignore_eos=True))
    wait_for(client, lambda e: isinstance(e, Token))
    client.send(Shutdown())
    assert client.wait_exit(60) == 0
    tokens = 0
    while not client.events.empty():
        tokens += isinstance(client.events.get(), Token)
    assert tokens < 4000 - 1, "the engine finished the run before it shut down"


def test_a_failed_configuration_does_not_keep_its_model_alive():
    """The frames of a failed step hold the model it ran; whatever keeps the error (an
    inductor failure in a compile=layers guard was kept somewhere in torch) kept a whole model
    resident after the next reload: +280 MB per failure on the embedded model. The runner
    clears those frames, the causes' too, before it reports the failure."""
    import gc
    import weakref

    from llmtop.engine.runner import _drop_frames

    class Model:
        pass

    def guard_step(model: Model) -> None:
        raise RuntimeError("C++ compile failed")

    def configure() -> tuple[RuntimeError, weakref.ref]:
        model = Model()
        try:
            try:
                guard_step(model)
            except RuntimeError as inner:
                raise RuntimeError("InductorError") from inner
        except RuntimeError as e:
            return e, weakref.ref(model)

    kept, model = configure()
    gc.collect()
    assert model() is not None   # held by the kept error's frames
    _drop_frames(kept)
    gc.collect()
    assert model() is None
