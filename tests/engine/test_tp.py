"""Tensor parallelism on the CPU: 2 ranks over gloo on synthetic:tiny (8 heads, 4 KV heads).

One real engine goes tp=1 -> tp=2 (a follower process joins), so both runs build the same
seeded weights; the tp=2 run must give the tp=1 run's greedy tokens. Then: a stop agreed by
both ranks, refusals before loading, no follower left after close or after rank 0 is killed.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import (Configure, Error, Generate, GuardResult, ModelInfo, RunDone, Status,
                             StepProfile, Stop, Token)

from ..conftest import wait_for

TINY = "synthetic:tiny"
REQUEST = dict(prompt_len=12, batch=2, max_new_tokens=10, ignore_eos=True)


def configure(client: EngineClient, cfg: Configure) -> tuple[object, list]:
    seen: list = []
    client.send(cfg)
    ev = wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), 240, seen)
    return ev, seen


def run(client: EngineClient, req: Generate, timeout: float = 120) -> tuple[dict, list]:
    seen: list = []
    client.send(req)
    done = wait_for(client, lambda e: isinstance(e, (RunDone, Error)), timeout, seen)
    assert isinstance(done, RunDone), done
    return done.record, seen


def ids(record: dict) -> list[list[int]]:
    return [[t["id"] for t in row] for row in record["tokens"]]


def followers(pid: int) -> list[psutil.Process]:
    """The engine's tensor-parallel followers: its multiprocessing-spawned children."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if any("spawn_main" in part for part in p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module", autouse=True)
def cpu_only():
    """CPU ranks run only where torch sees no GPU: hide any from the engines these tests start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


@pytest.fixture(scope="module")
def engine():
    client = EngineClient()
    client.start()
    yield client
    client.close()


@pytest.fixture(scope="module")
def tp1_record(engine):
    ev, _ = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=1))
    assert isinstance(ev, GuardResult), ev
    assert followers(engine.pid) == []
    record, _ = run(engine, Generate(run_id=1, **REQUEST))
    return record


def profiled(client: EngineClient, run_id: int) -> StepProfile:
    """A short run with the prefill and 3 decode steps profiled."""
    client.send(Generate(run_id=run_id, prompt_len=12, batch=1, max_new_tokens=6, ignore_eos=True,
                         profile_steps=3))
    seen: list = []
    wait_for(client, lambda e: isinstance(e, (RunDone, Error)), 180, seen)
    profiles = [e for e in seen if isinstance(e, StepProfile)]
    assert len(profiles) == 1, seen[-3:]
    return profiles[0]


def test_one_rank_spends_nothing_in_collectives(engine, tp1_record):
    p = profiled(engine, 11)
    assert p.tp == 1 and p.step_ms > 0
    assert (p.collective_ms, p.collective_pct, p.collective_calls) == (0.0, 0.0, 0)


def test_tp2_gives_the_tp1_greedy_tokens(engine, tp1_record):
    ev, seen = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=2))
    assert isinstance(ev, GuardResult), ev
    info = next(e for e in seen if isinstance(e, ModelInfo))
    assert (info.tp, info.devices, info.gpus) == (2, ["cpu", "cpu"], [])
    assert info.params == tp1_record["model"]["params"]  # the whole model, not one rank's shard
    assert len(followers(engine.pid)) == 1
    record, seen = run(engine, Generate(run_id=2, **REQUEST))
    assert ids(record) == ids(tp1_record)
    assert len(set(ids(record)[0])) > 1  # real tokens, not one id repeated
    assert record["config"]["tp"] == 2 and record["model"]["tp"] == 2
    # rank 0 streams and stamps exactly as with one rank
    tokens = [e for e in seen if isinstance(e, Token)]
    assert [t.index for t in tokens] == list(range(REQUEST["max_new_tokens"]))
    assert all(a.t_ns < b.t_ns for a, b in zip(tokens, tokens[1:]))
    assert record["metrics"]["n_tokens"] == REQUEST["max_new_tokens"]
    json.dumps(record)


def test_tp2_profile_reports_the_share_of_each_step_in_collectives(engine, tp1_record):
    """Two all-reduces per layer and one all-gather of the logits per step, over gloo: the
    profile counts gloo's spans, per step and as a share of the step."""
    p = profiled(engine, 12)
    assert p.tp == 2 and p.device == "cpu" and p.steps == 4
    layers = tp1_record["model"]["layers"]
    assert p.collective_calls >= p.steps * (2 * layers + 1)
    assert 0 < p.collective_ms < p.step_ms and 0 < p.collective_pct < 100
    # the share is of the decode steps: their time per step times the share is the collectives'
    decode_ms = 100 * p.collective_ms / p.collective_pct
    assert decode_ms < p.step_ms * p.steps / (p.steps - 1)   # the prefill is left out
    assert p.busy_ms > 0   # ATen ops under the decode span still count as busy


def test_gpus_on_a_cpu_are_refused_before_loading(engine, tp1_record):
    ev, seen = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=2,
                                           gpus=[0, 1]))
    assert isinstance(ev, Error) and ev.kind == "config", ev
    assert ev.message == "--gpus names GPUs: use --device cuda with it"
    assert not [e for e in seen if isinstance(e, ModelInfo)]


def test_a_stop_ends_every_rank_at_the_same_step(engine, tp1_record):
    engine.send(Generate(run_id=3, prompt_len=8, max_new_tokens=400, ignore_eos=True))
    wait_for(engine, lambda e: isinstance(e, Token) and e.index >= 2, 120)
    engine.send(Stop())
    done = wait_for(engine, lambda e: isinstance(e, (RunDone, Error)), 120)
    assert isinstance(done, RunDone), done
    assert done.record["stopped"] == "stop"
    assert done.record["metrics"]["n_tokens"] < 400
    # had the follower run on (or stopped a step apart), the ranks' collectives would now pair
    # up wrongly: this run would hang, fail or give other tokens
    record, _ = run(engine, Generate(run_id=4, **REQUEST))
    assert ids(record) == ids(tp1_record)


@pytest.mark.parametrize("model,tp,heads", [(TINY, 3, "8 attention heads and 4 KV heads"),
                                            ("embedded", 2, "9 attention heads and 3 KV heads")])
def test_a_tp_that_does_not_divide_the_heads_is_refused_before_loading(engine, tp1_record,
                                                                       model, tp, heads):
    ev, seen = configure(engine, Configure(model=model, device="cpu", dtype="bf16", tp=tp))
    assert isinstance(ev, Error) and ev.kind == "config", ev
    assert f"--tp {tp} does not divide" in ev.message and heads in ev.message
    assert "\n" not in ev.message
    assert not [e for e in seen if isinstance(e, Status) and e.phase == "loading"]
    assert not [e for e in seen if isinstance(e, ModelInfo)]


def test_native_paged_runs_on_two_ranks_and_hf_paged_is_refused(engine, tp1_record):
    """backend=native's block pool holds each rank's KV heads, so kv=paged takes --tp 2 and
    gives native static's tokens; transformers' continuous batching is refused in one line."""
    native = {"backend": "native", "attention": "sdpa"}
    got = {}
    for kv in ("static", "paged"):
        ev, _ = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=2,
                                            opts={**native, "kv": kv}))
        assert isinstance(ev, GuardResult), ev
        record, _ = run(engine, Generate(run_id=20, **REQUEST))
        assert record["config"]["tp"] == 2 and record["kv"] == kv
        got[kv] = ids(record)
    assert got["paged"] == got["static"] and len(set(got["paged"][0])) > 1
    ev, _ = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=2,
                                        opts={"kv": "paged"}))
    assert isinstance(ev, Error) and ev.kind == "config", ev
    assert ev.message.startswith("kv=paged with --tp > 1 runs on backend=native")
    ev, _ = configure(engine, Configure(model=TINY, device="cpu", dtype="bf16", tp=2))
    assert isinstance(ev, GuardResult), ev     # back to hf for the tests after this one


def test_close_leaves_no_follower(engine, tp1_record):
    procs = followers(engine.pid)
    assert len(procs) == 1
    record, _ = run(engine, Generate(run_id=5, **REQUEST))  # the refusals left tp=2 working
    assert ids(record) == ids(tp1_record)
    engine.close()
    assert gone(procs, 10)


def test_followers_exit_when_rank_0_is_killed():
    client = EngineClient()
    client.start()
    try:
        ev, _ = configure(client, Configure(model=TINY, device="cpu", dtype="bf16", tp=2))
        assert isinstance(ev, GuardResult), ev
        procs = followers(client.pid)
        assert len(procs) == 1
        os.kill(client.pid, signal.SIGKILL)
        assert gone(procs, 10)
    finally:
        client.close()


def test_check_reads_heads_without_loading(tmp_path):
    import torch

    from llmtop.engine import catalogue, spec, tp_placement

    if torch.cuda.is_available():  # this process saw the GPUs before cpu_only could hide them
        with pytest.raises(catalogue.OptionError, match="use --device cuda"):
            tp_placement.check(spec.resolve(TINY), "cpu", 2, {})
    else:
        tp_placement.check(spec.resolve(TINY), "cpu", 2, {})
        tp_placement.check(spec.resolve(TINY), "cpu", 4, {})
    with pytest.raises(catalogue.OptionError, match="sizes that fit: 1, 2, 4"):
        tp_placement.check(spec.resolve(TINY), "cpu", 8, {})   # 8 heads, but only 4 KV heads
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"text_config": {"num_attention_heads": 12, "num_key_value_heads": 6}}))
    assert tp_placement.head_counts(spec.resolve(str(folder))) == (12, 6)
    with pytest.raises(catalogue.OptionError, match="does not divide"):
        tp_placement.check(spec.resolve(str(folder)), "cpu", 4, {})
    past = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU box)
    with pytest.raises(catalogue.OptionError, match="torch sees"):
        tp_placement.check(spec.resolve(TINY), past, 2, {})
    with pytest.raises(catalogue.OptionError, match="paged"):
        tp_placement.check(spec.resolve(TINY), "cpu", 2, {"kv": "paged"})
