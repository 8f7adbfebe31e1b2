"""The tensor-parallel GPU set: named or recommended, mapped to torch's numbering, against the
fake pynvml describing NVLink-bridged and PCIe-only boxes."""

from __future__ import annotations

import pytest
from fakes.loader import load_fake
from llmtop.profilers.gpu import GpuStatic
from llmtop.profilers.gpu_set import GpuSetError, choose, parse_gpus, visible_map
from llmtop.profilers.nvml import NvmlBackend


def _box(monkeypatch, nvlink: bool):
    """Four PCIe cards; with nvlink, bridged 0-1 and 2-3 (4 links each); 1 and 2 share a PCIe
    switch (PIX), every other pair crosses the host (SYS)."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = [fake.FakeGpu(bus_id=f"00000000:{0x17 + 0x20 * i:02X}:00.0",
                         uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd") for i in range(4)]
    if nvlink:
        for a, b in ((0, 1), (2, 3)):
            gpus[a].nvlinks = [gpus[b].bus_id] * 4
            gpus[b].nvlinks = [gpus[a].bus_id] * 4
    fake.configure(gpus, {(1, 2): fake.NVML_TOPOLOGY_SINGLE})
    backend = NvmlBackend()
    return backend.devices(), backend.topology()


def torch_uuids(physical: list[int]) -> list[str]:
    """What torch reports for cuda:0.. when those are the given physical GPUs (no GPU- prefix)."""
    return [f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd" for i in physical]


def test_nvlink_pair_is_recommended_and_mapped_by_uuid(monkeypatch):
    devices, matrix = _box(monkeypatch, nvlink=True)
    chosen = choose(2, None, devices, matrix, torch_uuids([0, 1, 2, 3]), None)
    assert (chosen.gpus, chosen.devices, chosen.how) == ([0, 1], ["cuda:0", "cuda:1"], "recommended")
    assert "NV4" in chosen.why
    # torch sees only GPUs 2 and 3, as cuda:0 and cuda:1: the bridged pair among them, in
    # torch's numbers
    chosen = choose(2, None, devices, matrix, torch_uuids([2, 3]), "2,3")
    assert (chosen.gpus, chosen.ordinals) == ([2, 3], [0, 1])
    # torch sees 1, 2, 3: the recommender must not pick a GPU torch cannot use (0)
    chosen = choose(2, None, devices, matrix, torch_uuids([3, 1, 2]), "3,1,2")
    assert (chosen.gpus, chosen.ordinals) == ([2, 3], [2, 0])


def test_pcie_box_picks_the_pair_behind_one_switch(monkeypatch):
    devices, matrix = _box(monkeypatch, nvlink=False)
    chosen = choose(2, None, devices, matrix, torch_uuids([0, 1, 2, 3]), None)
    assert (chosen.gpus, chosen.ordinals) == ([1, 2], [1, 2])
    assert "PIX" in chosen.why
    # CUDA_VISIBLE_DEVICES reorders them: cuda:0 is GPU 2, cuda:1 is GPU 1
    chosen = choose(2, None, devices, matrix, torch_uuids([2, 1]), "2,1")
    assert (chosen.gpus, chosen.devices) == ([1, 2], ["cuda:1", "cuda:0"])


def test_named_sets_keep_their_order_and_are_mapped(monkeypatch):
    devices, matrix = _box(monkeypatch, nvlink=True)
    chosen = choose(2, [3, 0], devices, matrix, torch_uuids([0, 1, 2, 3]), None)
    assert (chosen.gpus, chosen.ordinals, chosen.how) == ([3, 0], [3, 0], "named")
    chosen = choose(2, [3, 1], devices, matrix, torch_uuids([1, 3]), "1,3")
    assert chosen.ordinals == [1, 0]
    chosen = choose(1, [2], devices, matrix, torch_uuids([0, 1, 2, 3]), None)
    assert chosen.devices == ["cuda:2"]


@pytest.mark.parametrize("tp,named,visible,env,message", [
    (2, [0, 1, 2], [0, 1, 2, 3], None, "--gpus 0,1,2 names 3 GPUs for --tp 2"),
    (2, [1, 1], [0, 1, 2, 3], None, "names GPU 1 twice"),
    (2, [0, 7], [0, 1, 2, 3], None, "no GPU 7 here (GPUs 0-3)"),
    (2, [0, 3], [0, 1], "0,1", "GPU 3 is hidden from torch by CUDA_VISIBLE_DEVICES=0,1"),
    (4, None, [0, 1], "0,1", "--tp 4 needs 4 GPUs, but torch sees 2 (CUDA_VISIBLE_DEVICES=0,1)"),
])
def test_impossible_sets_are_refused_in_one_line(monkeypatch, tp, named, visible, env, message):
    devices, matrix = _box(monkeypatch, nvlink=True)
    with pytest.raises(GpuSetError) as err:
        choose(tp, named, devices, matrix, torch_uuids(visible), env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_without_uuids_the_visible_devices_rule_maps(monkeypatch):
    devices, _ = _box(monkeypatch, nvlink=False)
    assert visible_map(devices, [None, None], "3,1") == {3: 0, 1: 1}
    assert visible_map(devices, [None] * 4, None) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert visible_map(devices, [None], "GPU-00000002") == {2: 0}
    with pytest.raises(GpuSetError, match="cannot tell"):
        visible_map(devices, [None], "GPU-0000000")   # a prefix of every UUID


def test_without_telemetry_the_numbers_are_torchs():
    chosen = choose(2, None, [], None, [None, None, None], None)
    assert (chosen.gpus, chosen.ordinals, chosen.how) == ([0, 1], [0, 1], "in order")
    assert choose(2, [2, 0], [], None, [None] * 3, None).devices == ["cuda:2", "cuda:0"]
    with pytest.raises(GpuSetError, match="no GPU 3 here"):
        choose(2, [0, 3], [], None, [None] * 3, None)


def test_parse_gpus():
    assert parse_gpus("0,1") == [0, 1]
    assert parse_gpus(" 2 , 3 ") == [2, 3]
    for bad in ("", "0,,1", "a,b", "-1", "0;1"):
        with pytest.raises(GpuSetError, match="give GPU numbers"):
            parse_gpus(bad)


def test_a_degraded_matrix_says_so_in_the_why():
    """A link weight that failed to read: the choice uses what is known and the reason the
    engine records says the recommendation is degraded."""
    from llmtop.profilers.topology import Link, TopologyMatrix

    def link(a, b):
        if a == b:
            return Link("self", "X", weight=0)
        if {a, b} == {0, 1}:
            return Link("xgmi", "XGMI", 200.0, hops=1, weight=None,
                        error="link weight: AmdSmiRetryException: Error code: 9")
        return Link("xgmi", "XGMI", hops=2, weight=30)
    matrix = TopologyMatrix("amdsmi", [0, 1, 2], [[link(a, b) for b in range(3)] for a in range(3)])
    devices = [GpuStatic(index=i, name="g", vendor="amd", uuid=f"u{i}") for i in range(3)]
    chosen = choose(2, None, devices, matrix, ["u0", "u1", "u2"], None)
    assert chosen.gpus == [0, 1]
    assert chosen.why.startswith("recommended by the link matrix (XGMI), degraded: 1 of 3 pairs "
                                 "not fully read (link weight: AmdSmiRetryException")
