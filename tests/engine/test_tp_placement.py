"""engine/tp_placement.py `place`: the engine's glue between the GPU-set choice and torch, on a CPU, with
the fake pynvml standing in for the driver and torch's side (UUIDs, current device) given."""

from __future__ import annotations

import pytest

from llmtop.engine import catalogue
from llmtop.engine import tp_placement as tp
from llmtop.profilers.nvml import NvmlBackend

from ..fakes.loader import load_fake


@pytest.fixture
def box(monkeypatch):
    """Four H100s, NVLink-bridged 0-1 and 2-3; torch sees the GPUs CUDA_VISIBLE_DEVICES says."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = [fake.FakeGpu(bus_id=f"00000000:{0x17 + 0x20 * i:02X}:00.0",
                         uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd") for i in range(4)]
    for a, b in ((0, 1), (2, 3)):
        gpus[a].nvlinks = [gpus[b].bus_id] * 4
        gpus[b].nvlinks = [gpus[a].bus_id] * 4
    fake.configure(gpus)
    closed = []

    def telemetry():
        backend = NvmlBackend()
        real_close = backend.close
        backend.close = lambda: (closed.append(True), real_close())
        return backend, backend.devices(), backend.topology()

    def visible(*physical: int, env: str | None = None) -> None:
        monkeypatch.setattr(tp, "_cuda_uuids", lambda: [
            f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd" for i in physical])
        if env is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)

    monkeypatch.setattr(tp, "_telemetry", telemetry)
    monkeypatch.setattr(tp, "_current_cuda", lambda: 0)
    monkeypatch.delenv(tp.EXTERNAL_ENV, raising=False)
    visible(0, 1, 2, 3)
    return visible, closed


def test_the_recommended_set_and_a_named_one(box):
    visible, closed = box
    placed = tp.place("cuda", 2, None)
    assert (placed.devices, placed.gpus) == (["cuda:0", "cuda:1"], [0, 1])
    assert placed.why == "recommended by the link matrix (NV4)"
    placed = tp.place("cuda", 2, [3, 2])
    assert (placed.devices, placed.gpus, placed.why) == (["cuda:3", "cuda:2"], [3, 2],
                                                         "named with --gpus")
    visible(2, 3, env="2,3")   # torch's cuda:0 is GPU 2
    placed = tp.place("cuda", 2, None)
    assert (placed.devices, placed.gpus) == (["cuda:0", "cuda:1"], [2, 3])
    assert closed and all(closed)   # NVML released each time


def test_one_rank_and_an_explicit_first_gpu_keep_their_meaning(box):
    visible, _ = box
    visible(3, 1, env="3,1")
    one = tp.place("cuda", 1, None)
    assert (one.devices, one.gpus) == (["cuda"], [3])   # the current device, GPU 3
    explicit = tp.place("cuda:0", 2, None)
    assert (explicit.devices, explicit.gpus) == (["cuda:0", "cuda:1"], [3, 1])
    assert tp.place("cuda", 1, [1]).devices == ["cuda:1"]
    assert tp.place("cpu", 2, None).devices == ["cpu", "cpu"]


@pytest.mark.parametrize("device,size,named,message", [
    ("cpu", 2, [0, 1], "--gpus names GPUs: use --device cuda with it"),
    ("cuda:1", 2, [0, 1], "--gpus and --device cuda:1 both place the ranks: use --device cuda "
                          "with --gpus"),
    ("cuda", 2, [0, 9], "--gpus: no GPU 9 here (GPUs 0-3)"),
    ("cuda", 2, [1], "--gpus 1 names 1 GPU for --tp 2: name exactly one GPU per rank"),
])
def test_refusals_are_one_line_option_errors(box, device, size, named, message):
    with pytest.raises(catalogue.OptionError) as err:
        tp.place(device, size, named)
    assert str(err.value) == message


def test_plain_cuda_passes_the_up_front_check_when_enough_gpus_are_seen(monkeypatch):
    """Seen on a 4-GPU machine: `--device cuda --tp 2` was refused as if it were the CPU."""
    import pytest
    import torch

    from llmtop.engine import catalogue
    from llmtop.engine import tp_placement as tp
    from llmtop.engine.spec import resolve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    tp.check(resolve("synthetic:tiny"), "cuda", 2, {})
    tp.check(resolve("synthetic:tiny"), "cuda", 4, {})
    with pytest.raises(catalogue.OptionError, match="needs 8 GPUs, but torch sees 4"):
        tp.check(resolve("synthetic:llama-2-7b"), "cuda", 8, {})
    with pytest.raises(catalogue.OptionError, match="use --device cuda"):
        tp.check(resolve("synthetic:tiny"), "cpu", 2, {})


def test_a_gpu_tensor_parallel_group_ends_with_its_engine_process():
    """Seen on 4 x H200: rank 0 died (SIGSEGV) replacing a 2-GPU NCCL group by a 4-GPU one."""
    from dataclasses import replace

    from llmtop.engine.client import needs_fresh_engine
    from llmtop.engine.protocol import Configure

    gpu2 = Configure("synthetic:llama-2-7b", "cuda", "bf16", {}, 2, None)
    same = Configure("synthetic:llama-2-7b", "cuda", "bf16", {"attention": "flash"}, 2, None)
    assert not needs_fresh_engine(gpu2, same)          # options change in place
    assert needs_fresh_engine(gpu2, Configure("synthetic:llama-2-7b", "cuda", "bf16", {}, 4))
    assert needs_fresh_engine(gpu2, Configure("synthetic:llama-2-7b", "cuda", "bf16", {}, 1))
    assert needs_fresh_engine(gpu2, Configure("synthetic:llama-2-7b", "cuda", "bf16", {}, 2, [2, 3]))
    assert not needs_fresh_engine(None, same)
    assert not needs_fresh_engine(replace(gpu2, tp=1), same)  # one GPU: no group yet
    assert not needs_fresh_engine(replace(gpu2, device="cpu"),
                                  Configure("synthetic:tiny", "cpu", "bf16", {}, 1))
