"""Each GPU's NUMA node from the vendor library (NVML memory / CPU affinity, amdsmi's NUMA node
number), sysfs as the fallback, each figure naming its source; where the engine's threads and
memory are, and the one command that fixes a mismatch."""

from __future__ import annotations

import json
import os

import pytest
from fakes.loader import load_fake
from fakes.machines import MI250_NUMA, mi250_gpus, mi250_pairs
from llmtop.profilers.amdsmi_backend import AmdSmiBackend
from llmtop.profilers.gpu import GpuStatic
from llmtop.profilers.numa import engine_memory, fix_command, memory_local, numa_status
from llmtop.profilers.nvml import NvmlBackend
from llmtop.profilers.report import info_dict, info_text


@pytest.fixture
def vm_root(tmp_path):
    """A two-node host whose sysfs has no numa_node for any PCI device (a VM or container)."""
    allowed = sorted(os.sched_getaffinity(0))
    for node in (0, 1):
        d = tmp_path / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(",".join(map(str, allowed)) if node == 0 else "64-127")
        (d / "meminfo").write_text(f"Node {node} MemTotal: 1048576 kB\n"
                                   f"Node {node} MemFree: 524288 kB\n")
    return tmp_path


def nvidia(fake, *nodes, cpus=None):
    gpus = [fake.FakeGpu(bus_id=f"00000000:{0x17 + 0x40 * i:02X}:00.0", uuid=f"GPU-{i}",
                         numa_node=node, cpus=list(cpus[i]) if cpus else [])
            for i, node in enumerate(nodes)]
    fake.configure(gpus)
    return gpus


def test_nvml_memory_affinity_names_the_node_when_sysfs_does_not(monkeypatch, vm_root):
    fake = load_fake(monkeypatch, "pynvml")
    nvidia(fake, 0, 1)
    backend = NvmlBackend()
    assert [(d.numa_node, d.numa_source) for d in backend.devices()] == [
        (0, "NVML memory affinity"), (1, "NVML memory affinity")]
    info = info_dict(backend, root=str(vm_root))
    assert info["numa"]["gpu_nodes"] == {0: 0, 1: 1}
    assert info["numa"]["gpu_node_sources"] == {0: "NVML memory affinity",
                                                1: "NVML memory affinity"}
    json.dumps(info)  # `llmtop info --json` carries them
    text = info_text(NvmlBackend(), root=str(vm_root))
    assert "bus 0000:57:00.0, NUMA node 1 (NVML memory affinity)" in text


def test_nvml_cpu_affinity_when_memory_affinity_fails(monkeypatch, vm_root):
    fake = load_fake(monkeypatch, "pynvml")
    nvidia(fake, None, None, cpus=[range(64, 128), range(0, 1000)])
    fake._state["faults"] = {"nvmlDeviceGetMemoryAffinity": fake.NVML_ERROR_NO_PERMISSION}
    backend = NvmlBackend()
    assert backend.devices()[0].cpu_affinity == list(range(64, 128))
    status = numa_status(backend.devices(), root=str(vm_root))
    # GPU1's "close" CPUs span both nodes: no node can be named from them
    assert status.gpu_nodes == {0: 1, 1: -1}
    assert status.gpu_node_sources == {0: "NVML CPU affinity", 1: "unknown"}
    assert backend.errors[0, "numa"] == "NVMLError_NoPermission: Insufficient Permissions"


def test_sysfs_is_the_fallback_and_says_so(monkeypatch, vm_root):
    fake = load_fake(monkeypatch, "pynvml")
    nvidia(fake, None, None)
    p = vm_root / "sys/bus/pci/devices/0000:17:00.0"
    p.mkdir(parents=True)
    (p / "numa_node").write_text("1\n")
    status = numa_status(NvmlBackend().devices(), root=str(vm_root))
    assert status.gpu_nodes == {0: 1, 1: -1}
    assert status.gpu_node_sources == {0: "sysfs", 1: "unknown"}


def test_amdsmi_numa_node_number(monkeypatch, vm_root):
    fake = load_fake(monkeypatch, "amdsmi")
    gpus = mi250_gpus(fake)
    for i, gpu in enumerate(gpus):
        gpu.numa_node = MI250_NUMA[i]
    gpus[7].numa_node = None  # the KFD knows none: 4294967295 through the uint32
    gpus[7].cpus = list(range(64, 128))  # amdsmi_get_cpu_affinity_with_scope still answers
    fake.configure(gpus, mi250_pairs(fake))
    status = numa_status(AmdSmiBackend().devices(), root=str(vm_root))
    assert status.gpu_nodes == {**MI250_NUMA, 7: 1}
    assert set(status.gpu_node_sources.values()) == {"amdsmi", "amdsmi CPU affinity"}
    assert status.gpu_node_sources[7] == "amdsmi CPU affinity"


def test_a_failing_numa_query_is_unknown_not_node_0(monkeypatch, vm_root):
    fake = load_fake(monkeypatch, "amdsmi")
    gpus = mi250_gpus(fake)
    gpus[0].numa_node = 0
    fake.configure(gpus, faults={"amdsmi_topo_get_numa_node_number": fake.AmdSmiTimeoutException()})
    backend = AmdSmiBackend()
    status = numa_status(backend.devices(), root=str(vm_root))
    assert status.gpu_nodes[0] == -1 and status.gpu_node_sources[0] == "unknown"
    assert backend.errors[0, "numa"].startswith("AmdSmiTimeoutException")


NUMA_MAPS = """\
7f0000000000 default anon=1000 dirty=1000 N0=900 N1=100 kernelpagesize_kB=4
7f1000000000 default file=/usr/lib/libtorch.so mapped=50 N1=50 kernelpagesize_kB=4
7f2000000000 default anon=2 dirty=2 N1=2 kernelpagesize_kB=2048
"""


def test_engine_memory_from_numa_maps(tmp_path):
    (tmp_path / "proc/4242").mkdir(parents=True)
    (tmp_path / "proc/4242/numa_maps").write_text(NUMA_MAPS)
    assert engine_memory(4242, str(tmp_path)) == {0: 900 * 4096, 1: 150 * 4096 + 2 * 2**21}
    assert engine_memory(4243, str(tmp_path)) is None


def test_each_gpu_gets_its_verdict_and_the_fix(vm_root):
    """The engine runs on node 0's CPUs with most of its memory on node 1 (4 MiB of huge
    pages): for GPU0 (node 0) the memory is off, for GPU1 (node 1) the threads are."""
    pid = os.getpid()
    (vm_root / f"proc/{pid}").mkdir(parents=True)
    (vm_root / f"proc/{pid}/numa_maps").write_text(NUMA_MAPS)
    gpus = [GpuStatic(index=0, name="a", vendor="nvidia", numa_node=0,
                      numa_source="NVML memory affinity"),
            GpuStatic(index=1, name="b", vendor="nvidia", numa_node=1,
                      numa_source="NVML memory affinity")]
    status = numa_status(gpus, pid=pid, root=str(vm_root))
    assert status.local == {0: True, 1: False}
    assert memory_local(status, 0) is False and memory_local(status, 1) is True
    assert fix_command(status, 0) == "numactl --cpunodebind=0 --membind=0 llmtop"
    assert fix_command(status, 1) == f"taskset -a -c -p 64-127 {pid}"
    status.engine_mem = {0: 10}
    assert fix_command(status, 0) is None  # nothing off, nothing to fix
