"""NUMA readers on this machine's /proc and /sys, and on a two-socket fixture tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from llmtop.profilers.gpu import GpuStatic
from llmtop.profilers.numa import (
    BALANCING_FIX,
    balancing_warning,
    gpu_node,
    is_local,
    nodes,
    numa_balancing,
    numa_status,
    parse_cpulist,
    pin_to_node,
)

GIB_KB = 1024 * 1024


def two_socket_host(root: Path, balancing: int = 1) -> Path:
    """A 2-socket, 16-CPU host (SMT siblings interleaved the way Intel numbers them: node 0 has
    0-3 and 8-11) with 64 GiB per node, one GPU per socket, one GPU the firmware placed
    nowhere, and NUMA balancing as given."""
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/numa_balancing").write_text(f"{balancing}\n")
    for node, cpus in ((0, "0-3,8-11"), (1, "4-7,12-15")):
        d = root / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(
            f"Node {node} MemTotal:       {64 * GIB_KB} kB\n"
            f"Node {node} MemFree:        {(40 + node) * GIB_KB} kB\n"
            f"Node {node} MemUsed:        {(24 - node) * GIB_KB} kB\n")
    (root / "sys/devices/system/node/online").write_text("0-1\n")
    for bus, node in (("0000:17:00.0", "0"), ("0000:ca:00.0", "1"), ("0000:e1:00.0", "-1")):
        d = root / "sys/bus/pci/devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(node + "\n")
    return root


GPUS = [GpuStatic(index=0, name="a", vendor="nvidia", pci_bus_id="0000:17:00.0"),
        GpuStatic(index=1, name="b", vendor="nvidia", pci_bus_id="0000:CA:00.0"),
        GpuStatic(index=2, name="c", vendor="nvidia", pci_bus_id="0000:e1:00.0"),
        GpuStatic(index=3, name="d", vendor="nvidia", pci_bus_id=None)]


def test_two_socket_fixture_with_balancing_on(tmp_path):
    root = str(two_socket_host(tmp_path))
    status = numa_status(GPUS, root=root)
    assert status.balancing == 1
    assert BALANCING_FIX in status.warning and "normal" in status.warning
    assert [n.id for n in status.nodes] == [0, 1]
    assert status.nodes[0].cpus == [0, 1, 2, 3, 8, 9, 10, 11]
    assert status.nodes[1].cpus == [4, 5, 6, 7, 12, 13, 14, 15]
    assert status.nodes[1].mem_total == 64 * 1024**3 and status.nodes[1].mem_free == 41 * 1024**3
    assert status.gpu_nodes == {0: 0, 1: 1, 2: -1, 3: -1}
    assert status.pid is None and status.local == {}


def test_locality_of_a_process_against_the_fixture_nodes(tmp_path):
    root = str(two_socket_host(tmp_path))
    node0, node1 = nodes(root)
    assert is_local([0, 1, 8], node0) is True
    assert is_local([0, 4], node0) is False
    assert is_local([0], None) is None
    status = numa_status(GPUS, pid=os.getpid(), root=root)
    assert status.affinity == sorted(os.sched_getaffinity(0))
    assert status.local[2] is None and status.local[3] is None  # GPU on no known node


@pytest.mark.parametrize("value, words", [(0, None), (2, "memory tiering"),
                                          (3, "normal, memory tiering")])
def test_balancing_modes(value, words):
    warning = balancing_warning(value)
    assert warning is None if words is None else f"numa_balancing={value}: {words})" in warning


def test_missing_files_read_as_unknown(tmp_path):
    assert numa_balancing(str(tmp_path)) is None
    assert nodes(str(tmp_path)) == []
    assert gpu_node("0000:17:00.0", str(tmp_path)) == -1
    assert numa_status(GPUS, root=str(tmp_path)).warning is None


def test_cpulist_parsing():
    assert parse_cpulist("0-3,8-11\n") == [0, 1, 2, 3, 8, 9, 10, 11]
    assert parse_cpulist("5") == [5]
    assert parse_cpulist("\n") == []


def test_this_machine():
    """The real /proc and /sys: whatever they hold, the readers agree with the kernel."""
    status = numa_status(pid=os.getpid())
    text = Path("/proc/sys/kernel/numa_balancing")
    assert status.balancing == (int(text.read_text()) if text.exists() else None)
    online = set(parse_cpulist(Path("/sys/devices/system/cpu/online").read_text()))
    assert set().union(*(set(n.cpus) for n in status.nodes)) == online
    assert all(n.mem_total and n.mem_total > 0 for n in status.nodes if n.cpus)
    assert set(status.affinity) == os.sched_getaffinity(0)


def test_pinning_a_process_to_a_fixture_node(tmp_path):
    """Real sched_setaffinity on a child process, with node CPUs from a fixture tree that puts
    the highest CPU we may use alone on node 1."""
    allowed = sorted(os.sched_getaffinity(0))
    root = tmp_path
    for node, cpus in ((0, allowed[:-1] or allowed), (1, allowed[-1:])):
        d = root / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(",".join(map(str, cpus)))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pin_to_node(child.pid, 1, root=str(root)) == allowed[-1:]
        assert os.sched_getaffinity(child.pid) == set(allowed[-1:])
        with pytest.raises(ValueError, match="NUMA node 7 has no CPUs"):
            pin_to_node(child.pid, 7, root=str(root))
    finally:
        child.kill()
        child.wait()
