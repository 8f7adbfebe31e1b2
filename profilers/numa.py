"""NUMA status: balancing, nodes, each GPU's node, where the engine's threads and memory are.

Each GPU's node comes from the vendor library first (NVML's memory affinity or amdsmi's NUMA
node number, else the node holding the CPUs the library calls close), then from sysfs, and
each figure names its source: VMs and containers often have no numa_node in sysfs although the
driver knows. The study found that automatic NUMA balancing hurts GPU inference: its
page-fault driven migration makes the GPU wait on MMU-notifier invalidations. It also found
that a process on the far socket from its GPU pays for every host-device copy. Every reader
takes `root` so tests can point it at a fixture tree of another machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .gpu import GpuStatic

BALANCING_FIX = "echo 0 > /proc/sys/kernel/numa_balancing"

# kernel.numa_balancing is a bitmask (Linux 6.0+): 1 = classic balancing, 2 = memory tiering.
_BALANCING_MODES = {1: "normal", 2: "memory tiering"}


@dataclass
class NumaNode:
    """One node; a node without CPUs (CXL or HBM memory) has cpus == []."""

    id: int
    cpus: list[int] = field(default_factory=list)
    mem_total: int | None = None  # bytes
    mem_free: int | None = None


@dataclass
class NumaStatus:
    """Everything `llmtop info` and the NUMA panel show."""

    balancing: int | None  # None: unreadable (not Linux, or no NUMA support)
    warning: str | None
    nodes: list[NumaNode]
    gpu_nodes: dict[int, int]  # GPU index -> node, -1 = unknown
    pid: int | None = None
    affinity: list[int] | None = None
    local: dict[int, bool | None] = field(default_factory=dict)  # GPU index -> pid is local
    gpu_node_sources: dict[int, str] = field(default_factory=dict)  # "NVML memory affinity",
    #   "amdsmi", "NVML CPU affinity", "sysfs" or "unknown"
    engine_mem: dict[int, int] | None = None  # node -> bytes of the engine's pages there


def format_cpulist(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] as the kernel writes it: "0-3,8"."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = prev = None
    for cpu in ordered + [None]:
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def parse_cpulist(text: str) -> list[int]:
    """The kernel's list format ("0-3,8-11", "" for none) as CPU numbers."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def numa_balancing(root: str = "/") -> int | None:
    """kernel.numa_balancing (0-3), None where the file is missing."""
    text = _read(Path(root, "proc/sys/kernel/numa_balancing"))
    return int(text) if text and text.strip().isdigit() else None


def balancing_warning(value: int | None) -> str | None:
    """The one-line warning the UI shows while balancing is on, with the study's fix."""
    if not value:
        return None
    modes = [name for bit, name in _BALANCING_MODES.items() if value & bit] or ["unknown mode"]
    return (f"NUMA balancing is on (kernel.numa_balancing={value}: {', '.join(modes)}): page "
            f"migrations stall the GPU; as root: {BALANCING_FIX}")


def _meminfo_kb(text: str, key: str) -> int | None:
    """A "Node 0 MemTotal:  32768 kB" line's value in bytes."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == f"{key}:":
            return int(words[3]) * 1024
    return None


def nodes(root: str = "/") -> list[NumaNode]:
    """Every node under /sys/devices/system/node, in node order."""
    base = Path(root, "sys/devices/system/node")
    found = []
    for path in base.glob("node[0-9]*"):
        meminfo = _read(path / "meminfo") or ""
        found.append(NumaNode(
            id=int(path.name[4:]),
            cpus=parse_cpulist(_read(path / "cpulist") or ""),
            mem_total=_meminfo_kb(meminfo, "MemTotal"),
            mem_free=_meminfo_kb(meminfo, "MemFree"),
        ))
    return sorted(found, key=lambda n: n.id)


def gpu_node(pci_bus_id: str | None, root: str = "/") -> int:
    """The node the kernel assigns the PCI device ("0000:17:00.0"); -1 = unknown, which is
    also what the kernel writes on single-node machines and many VMs."""
    if not pci_bus_id:
        return -1
    text = _read(Path(root, "sys/bus/pci/devices", pci_bus_id.lower(), "numa_node"))
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1


_LIBRARY = {"nvidia": "NVML", "amd": "amdsmi"}


def resolve_gpu_node(gpu: GpuStatic, node_list: Sequence[NumaNode], root: str = "/"
                     ) -> tuple[int, str]:
    """(node, source) for one GPU: the vendor's node, else the node holding all the CPUs the
    vendor calls close, else sysfs; (-1, "unknown") when none of them knows."""
    if gpu.numa_node is not None:
        return gpu.numa_node, gpu.numa_source or _LIBRARY.get(gpu.vendor, gpu.vendor)
    if gpu.cpu_affinity:
        near = set(gpu.cpu_affinity)
        holding = [n.id for n in node_list if n.cpus and near <= set(n.cpus)]
        if len(holding) == 1:
            return holding[0], f"{_LIBRARY.get(gpu.vendor, gpu.vendor)} CPU affinity"
    node = gpu_node(gpu.pci_bus_id, root)
    return (node, "sysfs") if node >= 0 else (-1, "unknown")


def engine_memory(pid: int, root: str = "/") -> dict[int, int] | None:
    """Bytes of the process's pages on each node, from /proc/<pid>/numa_maps (N<node>=<pages>
    per mapping, in that mapping's kernelpagesize_kB); None where it cannot be read."""
    text = _read(Path(root, "proc", str(pid), "numa_maps"))
    if text is None:
        return None
    out: dict[int, int] = {}
    for line in text.splitlines():
        words = line.split()
        page = next((int(w.split("=")[1]) * 1024 for w in words
                     if w.startswith("kernelpagesize_kB=")), 4096)
        for w in words:
            if w[:1] == "N" and "=" in w and w[1:].split("=")[0].isdigit():
                node, pages = w[1:].split("=")
                out[int(node)] = out.get(int(node), 0) + int(pages) * page
    return out


def memory_local(status: NumaStatus, gpu: int) -> bool | None:
    """Whether most of the engine's memory is on the GPU's node; None when either is unknown."""
    node = status.gpu_nodes.get(gpu, -1)
    if node < 0 or not status.engine_mem:
        return None
    return max(status.engine_mem, key=lambda n: status.engine_mem[n]) == node


def memory_share(status: NumaStatus, node: int) -> float | None:
    """The share (0-1) of the engine's memory on `node`."""
    total = sum((status.engine_mem or {}).values())
    return status.engine_mem.get(node, 0) / total if total else None


def fix_command(status: NumaStatus, gpu: int, command: str = "llmtop") -> str | None:
    """The one command that puts the engine on GPU `gpu`'s node, or None when nothing is off
    (or the node is unknown). Memory off: restart under numactl, which binds both threads and
    allocations; only threads off: taskset moves every thread of the running engine."""
    node = status.gpu_nodes.get(gpu, -1)
    if node < 0:
        return None
    if memory_local(status, gpu) is False:
        return f"numactl --cpunodebind={node} --membind={node} {command}"
    cpus = next((n.cpus for n in status.nodes if n.id == node), [])
    if status.local.get(gpu) is False and cpus and status.pid is not None:
        return f"taskset -a -c -p {format_cpulist(cpus)} {status.pid}"
    return None


def is_local(affinity: Sequence[int], node: NumaNode | None) -> bool | None:
    """Whether every CPU the process may run on belongs to the node; None if the node is
    unknown or has no CPUs to be local to."""
    if node is None or not node.cpus:
        return None
    return set(affinity) <= set(node.cpus)


def pin_to_node(pid: int, node: int, root: str = "/") -> list[int]:
    """Restricts pid to the node's CPUs (os.sched_setaffinity) and returns them.

    Raises ValueError for a node without CPUs, OSError if the kernel refuses (CPUs outside the
    container's cpuset, or another user's process).
    """
    by_id = {n.id: n for n in nodes(root)}
    if node not in by_id or not by_id[node].cpus:
        raise ValueError(f"NUMA node {node} has no CPUs to pin to")
    os.sched_setaffinity(pid, by_id[node].cpus)
    return sorted(os.sched_getaffinity(pid))


def numa_status(gpus: Sequence[GpuStatic] = (), pid: int | None = None,
                root: str = "/") -> NumaStatus:
    """One reading of everything above; `pid` is the engine process (None: not running)."""
    balancing = numa_balancing(root)
    node_list = nodes(root)
    by_id = {n.id: n for n in node_list}
    resolved = {g.index: resolve_gpu_node(g, node_list, root) for g in gpus}
    gpu_nodes = {i: node for i, (node, _) in resolved.items()}
    affinity = None
    local: dict[int, bool | None] = {}
    engine_mem = engine_memory(pid, root) if pid is not None else None
    if pid is not None:
        try:
            affinity = sorted(os.sched_getaffinity(pid))
        except OSError:
            affinity = None
        if affinity is not None:
            local = {i: is_local(affinity, by_id.get(n)) for i, n in gpu_nodes.items()}
    return NumaStatus(balancing=balancing, warning=balancing_warning(balancing),
                      nodes=node_list, gpu_nodes=gpu_nodes, pid=pid, affinity=affinity,
                      local=local, engine_mem=engine_mem,
                      gpu_node_sources={i: source for i, (_, source) in resolved.items()})
