"""A synthetic model too big for one device is built shard-first: each rank allocates and
initialises only its slices. Two real gloo ranks on this CPU, as the engine's ranks would be."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from llmtop.engine import models

        model = models.build_synthetic("tiny", "cpu", torch.bfloat16, "sdpa", shard_first=2)
        q = model.model.layers[0].self_attn.q_proj.weight
        local = q.to_local()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([[1, 5, 7, 9]])).logits
        out[rank] = (tuple(q.shape), tuple(local.shape), float(local.float().std()),
                     logits[0, -1].float().tolist())
    finally:
        dist.destroy_process_group()


def test_shard_first_build_allocates_only_this_ranks_slices():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2)
    (full0, local0, std0, logits0), (full1, local1, std1, logits1) = out[0], out[1]
    assert full0 == full1 == (256, 256)  # the logical weight
    assert local0 == local1 == (128, 256)  # what each rank holds
    assert 0.015 < std0 < 0.025 and 0.015 < std1 < 0.025  # initialised, not empty memory
    assert logits0 == logits1  # the ranks agree: one model, not two
    assert max(abs(x) for x in logits0) > 0


def test_only_models_that_cannot_fit_are_built_shard_first():
    from llmtop.engine import models

    assert models.synthetic_bytes("llama-2-70b", torch.bfloat16) > 130e9
    assert models.fits_whole("llama-2-70b", "cpu", torch.bfloat16)  # host memory: build whole
