"""Tensor parallelism on 2 CUDA GPUs (NCCL). Skipped on a CPU or with fewer than 2 GPUs."""

from __future__ import annotations

import pytest

from llmtop.engine.client import EngineClient
from llmtop.protocol import Configure, Error, Generate, GuardResult, ModelInfo, RunDone

from ..conftest import wait_for

pytestmark = pytest.mark.gpu


def two_gpus() -> bool:
    import torch

    return torch.cuda.device_count() >= 2


def test_tp2_on_two_gpus_gives_the_tp1_greedy_tokens():
    if not two_gpus():
        pytest.skip("needs 2 CUDA GPUs")
    client = EngineClient()
    client.start()
    try:
        runs = {}
        for tp in (1, 2):
            # fp32: the all-reduce sums partial products in another order than one matmul; in
            # fp32 that moves logits by ~1e-6, far from flipping a greedy choice
            client.send(Configure(model="synthetic:tiny", device="cuda", dtype="fp32", tp=tp))
            seen: list = []
            ev = wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), 600, seen)
            assert isinstance(ev, GuardResult), ev
            info = next(e for e in seen if isinstance(e, ModelInfo))
            assert info.devices == [f"cuda:{r}" for r in range(tp)]
            client.send(Generate(run_id=tp, prompt_len=32, batch=2, max_new_tokens=16,
                                 ignore_eos=True))
            done = wait_for(client, lambda e: isinstance(e, (RunDone, Error)), 600)
            assert isinstance(done, RunDone), done
            runs[tp] = [[t["id"] for t in row] for row in done.record["tokens"]]
        assert runs[2] == runs[1]
    finally:
        client.close()
