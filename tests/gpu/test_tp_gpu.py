"""Tensor parallelism on 2 CUDA GPUs (NCCL). Skipped on a CPU or with fewer than 2 GPUs.

What only real GPUs can show: TP=2 over NCCL gives the TP=1 tokens; the ranks land on the GPU
set the link matrix recommends (or the one named, in its order), with torch's numbering mapped
from the machine's through the UUIDs even under CUDA_VISIBLE_DEVICES; the step profile counts the
NCCL kernels' time as the collective share.
"""

from __future__ import annotations

import pytest

from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import (Configure, Error, Generate, GuardResult, ModelInfo, RunDone,
                             StepProfile)

from ..conftest import wait_for

pytestmark = pytest.mark.gpu


def two_gpus() -> bool:
    import torch

    return torch.cuda.device_count() >= 2


@pytest.fixture
def client():
    if not two_gpus():
        pytest.skip("needs 2 CUDA GPUs")
    c = EngineClient()
    yield c
    c.close()


def configure(client: EngineClient, cfg: Configure) -> tuple[object, ModelInfo | None]:
    client.send(cfg)
    seen: list = []
    ev = wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), 600, seen)
    return ev, next((e for e in seen if isinstance(e, ModelInfo)), None)


def greedy(client: EngineClient, run_id: int, profile_steps: int = 0) -> tuple[list, list]:
    client.send(Generate(run_id=run_id, prompt_len=32, batch=2, max_new_tokens=16,
                         ignore_eos=True, profile_steps=profile_steps))
    seen: list = []
    done = wait_for(client, lambda e: isinstance(e, (RunDone, Error)), 600, seen)
    assert isinstance(done, RunDone), done
    ids = [[t["id"] for t in row] for row in done.record["tokens"]]
    return ids, [e for e in seen if isinstance(e, StepProfile)]


def machine_numbers() -> tuple[list[int], dict[int, int]]:
    """What the engine should choose, computed here from NVML and torch: the recommended pair
    (backend numbers) and the backend number -> torch ordinal map (by UUID)."""
    import torch

    from llmtop.profilers.gpu_set import visible_map
    from llmtop.profilers.nvml import NvmlBackend
    from llmtop.profilers.topology import recommend_tp_set

    backend = NvmlBackend()
    try:
        uuids = [str(torch.cuda.get_device_properties(k).uuid) for k in range(torch.cuda.device_count())]
        import os

        mapping = visible_map(backend.devices(), uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        matrix = backend.topology()
        usable = sorted(mapping)
        sub = type(matrix)(matrix.source, usable, [[matrix.link(a, b) for b in usable] for a in usable])
        return recommend_tp_set(sub, 2), mapping
    finally:
        backend.close()


def test_tp2_on_the_recommended_gpus_gives_the_tp1_tokens_and_an_nccl_share(client):
    client.start()
    expected, mapping = machine_numbers()
    runs, profiles = {}, {}
    for tp in (1, 2):
        # fp32: the all-reduce sums partial products in another order than one matmul; in
        # fp32 that moves logits by ~1e-6, far from flipping a greedy choice
        ev, info = configure(client, Configure(model="synthetic:tiny", device="cuda", dtype="fp32",
                                               tp=tp))
        assert isinstance(ev, GuardResult), ev
        if tp == 2:
            assert info.gpus == expected, info
            assert info.devices == [f"cuda:{mapping[g]}" for g in expected]
            assert info.gpu_choice.startswith("recommended by the link matrix")
        else:
            assert info.devices == ["cuda"] and info.gpus == [mapping_inverse(mapping)[0]]
        runs[tp], got = greedy(client, tp, profile_steps=4)
        (profiles[tp],) = got
    assert runs[2] == runs[1]
    # one rank: no collective; two: NCCL kernels, a real share of each decode step
    assert (profiles[1].collective_ms, profiles[1].collective_calls) == (0.0, 0)
    p = profiles[2]
    assert p.tp == 2 and p.device == "gpu" and p.collective_calls > 0
    assert 0 < p.collective_ms < p.step_ms and 0 < p.collective_pct < 100
    print(f"\nTP=2 NCCL: {p.collective_ms:.3f} ms of each decode step in collectives "
          f"({p.collective_pct:.1f}%), {p.collective_calls} kernels; step {p.step_ms:.2f} ms")


def mapping_inverse(mapping: dict[int, int]) -> dict[int, int]:
    return {k: g for g, k in mapping.items()}


def test_a_named_set_is_used_in_its_order(client):
    client.start()
    _, mapping = machine_numbers()
    back = mapping_inverse(mapping)
    named = [back[1], back[0]]   # rank 0 on torch's cuda:1
    ev, info = configure(client, Configure(model="synthetic:tiny", device="cuda", dtype="fp32",
                                           tp=2, gpus=named))
    assert isinstance(ev, GuardResult), ev
    assert info.devices == ["cuda:1", "cuda:0"] and info.gpus == named
    assert info.gpu_choice == "named with --gpus"
    swapped, _ = greedy(client, 1)
    ev, info = configure(client, Configure(model="synthetic:tiny", device="cuda", dtype="fp32", tp=1))
    assert isinstance(ev, GuardResult), ev
    one, _ = greedy(client, 2)
    assert swapped == one
    # refused in one line, before loading: a GPU that does not exist, a set of the wrong size
    for gpus, message in (([back[0], 99], "no GPU 99 here"),
                          ([back[0]], "names 1 GPU for --tp 2")):
        ev, info = configure(client, Configure(model="synthetic:tiny", device="cuda", dtype="fp32",
                                               tp=2, gpus=gpus))
        assert isinstance(ev, Error) and ev.kind == "config" and message in ev.message, ev
        assert "\n" not in ev.message and info is None


def test_cuda_visible_devices_reorders_torch_but_not_the_named_gpus(monkeypatch):
    """CUDA_VISIBLE_DEVICES=1,0: torch's cuda:0 is the machine's GPU 1. --gpus speaks the
    machine's numbers, so --gpus 0,1 puts rank 0 on cuda:1 (GPU 0) and rank 1 on cuda:0."""
    if not two_gpus():
        pytest.skip("needs 2 CUDA GPUs")
    _, mapping = machine_numbers()
    if sorted(mapping) != [0, 1]:
        pytest.skip("needs GPUs 0 and 1 visible to start from")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    c = EngineClient()
    c.start()
    try:
        ev, info = configure(c, Configure(model="synthetic:tiny", device="cuda", dtype="fp32",
                                          tp=2, gpus=[0, 1]))
        assert isinstance(ev, GuardResult), ev
        assert info.devices == ["cuda:1", "cuda:0"] and info.gpus == [0, 1]
        ev, info = configure(c, Configure(model="synthetic:tiny", device="cuda", dtype="fp32",
                                          tp=1, gpus=[0]))
        assert isinstance(ev, GuardResult), ev
        assert info.devices == ["cuda:1"] and info.gpus == [0]
    finally:
        c.close()
