"""Plain text for `llmtop info` and `llmtop top`: what the profilers see, without a TUI.

info_dict() is the JSON form (`llmtop info --json`); info_text() renders the same facts.
top_lines() / run_top() print one fixed-width line per GPU per poll, like `nvidia-smi dmon`,
for scripts that want numbers and no screen.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import psutil

from .gpu import GpuBackend, GpuSample, NoGpuBackend, detect_backend
from .numa import numa_status
from .topology import TopologyMatrix, recommend_tp_set, weakest_link

GIB = 1024**3
MIB = 1024**2
NA = "n/a"


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


def _tp_sizes(n: int) -> list[int]:
    """Tensor-parallel degrees worth proposing: powers of two (head counts divide by them)."""
    sizes, k = [], 2
    while k <= n:
        sizes.append(k)
        k *= 2
    return sizes


def topology_dict(matrix: TopologyMatrix) -> dict[str, Any]:
    """The matrix as labels and bandwidths, plus the recommended set for each TP degree."""
    links = [[dataclasses.asdict(link) for link in row] for row in matrix.links]
    recommended = {}
    for k in _tp_sizes(len(matrix.indices)):
        group = recommend_tp_set(matrix, k)
        recommended[str(k)] = {"gpus": group, "weakest_link": weakest_link(matrix, group)}
    return {"source": matrix.source, "indices": matrix.indices, "links": links,
            "recommended_tp": recommended}


def info_dict(backend: GpuBackend | None = None, pid: int | None = None,
              root: str = "/") -> dict[str, Any]:
    """Everything `llmtop info` reports, JSON-ready. Detects (and closes) a backend when none
    is given; `pid` is the engine process whose NUMA locality to check."""
    own = backend is None
    gpu = detect_backend() if backend is None else backend
    try:
        devices = gpu.devices()
        numa = numa_status(devices, pid=pid, root=root)
        mem = psutil.virtual_memory()
        return {
            "gpu": {
                "backend": gpu.name,
                "versions": gpu.describe(),
                "unavailable": gpu.reasons if isinstance(gpu, NoGpuBackend) else [],
                "devices": [dataclasses.asdict(d) for d in devices],
                "errors": [f"GPU{i} {field}: {msg}"
                           for (i, field), msg in sorted(getattr(gpu, "errors", {}).items())],
            },
            "host": {
                "cpus": psutil.cpu_count(logical=True),
                "allowed_cpus": format_cpulist(sorted(os.sched_getaffinity(0))),
                "mem_total": mem.total,
                "mem_available": mem.available,
                "load_avg": list(os.getloadavg()),
            },
            "numa": dataclasses.asdict(numa),
            "topology": topology_dict(gpu.topology()),
        }
    finally:
        if own:
            gpu.close()


def _gib(value: int | None) -> str:
    return NA if value is None else f"{value / GIB:.1f} GiB"


def matrix_text(topo: dict[str, Any]) -> list[str]:
    """Link labels like nvidia-smi topo -m, then direct-link bandwidth where any is known."""
    indices = topo["indices"]
    head = "        " + "".join(f"{'GPU' + str(i):>8}" for i in indices)
    lines = [head]
    for i, row in zip(indices, topo["links"]):
        lines.append(f"  {'GPU' + str(i):<6}" + "".join(f"{link['label']:>8}" for link in row))
    if any(link["bandwidth_gbps"] for row in topo["links"] for link in row):
        lines.append("  direct-link bandwidth, GB/s one way:")
        for i, row in zip(indices, topo["links"]):
            cells = ("-" if link["bandwidth_gbps"] is None else f"{link['bandwidth_gbps']:g}"
                     for link in row)
            lines.append(f"  {'GPU' + str(i):<6}" + "".join(f"{c:>8}" for c in cells))
    # a link's score is its bandwidth where the driver reports one, else its NVLink count
    known = any(link["bandwidth_gbps"] for row in topo["links"] for link in row)
    unit = " GB/s" if known else " NVLinks (no speed reported)"
    for k, rec in topo["recommended_tp"].items():
        gpus = ",".join(str(g) for g in rec["gpus"])
        lines.append(f"  TP={k}: GPUs {gpus} (weakest link it must cross: "
                     f"{rec['weakest_link']:g}{unit if rec['weakest_link'] else ', host path'})")
    return lines


def info_text(backend: GpuBackend | None = None, pid: int | None = None,
              root: str = "/") -> str:
    """info_dict() as the text `llmtop info` prints."""
    info = info_dict(backend, pid=pid, root=root)
    gpu, host, numa, topo = info["gpu"], info["host"], info["numa"], info["topology"]
    versions = ", ".join(f"{k} {v}" for k, v in gpu["versions"].items())
    lines = [f"GPU backend: {gpu['backend']}" + (f" ({versions})" if versions else "")]
    lines += [f"  not available: {reason}" for reason in gpu["unavailable"]]
    for d in gpu["devices"]:
        node = numa["gpu_nodes"].get(d["index"], -1)
        cap = NA if d["power_cap_w"] is None else f"{d['power_cap_w']:.0f} W"
        lines.append(f"  GPU{d['index']}: {d['name']}, {_gib(d['memory_total'])}, cap {cap}, "
                     f"bus {d['pci_bus_id'] or NA}, NUMA node {node if node >= 0 else NA}")
    lines += [f"  read error: {e}" for e in gpu["errors"]]
    load = " ".join(f"{x:.2f}" for x in host["load_avg"])
    lines.append(f"Host: {host['cpus']} CPUs (this process may use {host['allowed_cpus']}), "
                 f"{_gib(host['mem_total'])} RAM ({_gib(host['mem_available'])} available), "
                 f"load {load}")
    balancing = numa["balancing"]
    lines.append("NUMA: balancing " + (NA if balancing is None else
                                       f"{balancing} ({'on' if balancing else 'off'})"))
    if numa["warning"]:
        lines.append(f"  WARNING: {numa['warning']}")
    for node in numa["nodes"]:
        lines.append(f"  node {node['id']}: CPUs {format_cpulist(node['cpus']) or 'none'}, "
                     f"{_gib(node['mem_total'])} ({_gib(node['mem_free'])} free)")
    if numa["pid"] is not None:
        lines.append(f"  engine pid {numa['pid']}: CPUs "
                     f"{format_cpulist(numa['affinity'] or []) or NA}")
        for index, local in numa["local"].items():
            word = {True: "local", False: "NOT local", None: "unknown"}[local]
            lines.append(f"    to GPU{index}: {word}")
    if topo["indices"]:
        lines.append(f"Topology ({topo['source']}):")
        lines += matrix_text(topo)
    return "\n".join(lines)


_TOP_COLUMNS = [  # (header, width, GpuSample field, scale, format)
    ("gpu", 3, "index", 1, "d"), ("sm%", 4, "util_pct", 1, ".0f"),
    ("mem%", 4, "mem_util_pct", 1, ".0f"), ("usedMiB", 8, "mem_used", MIB, ".0f"),
    ("totMiB", 7, "mem_total", MIB, ".0f"), ("pwrW", 6, "power_w", 1, ".1f"),
    ("capW", 5, "power_cap_w", 1, ".0f"), ("tempC", 5, "temp_c", 1, ".0f"),
    ("hotC", 4, "temp_hotspot_c", 1, ".0f"), ("memC", 4, "temp_mem_c", 1, ".0f"),
    ("smMHz", 5, "sm_clock_mhz", 1, ".0f"), ("memMHz", 6, "mem_clock_mhz", 1, ".0f"),
    ("energyJ", 10, "energy_j", 1, ".1f"), ("pcieTxMB/s", 10, "pcie_tx_bps", 1e6, ".1f"),
    ("pcieRxMB/s", 10, "pcie_rx_bps", 1e6, ".1f"), ("linkTxMB/s", 10, "link_tx_bps", 1e6, ".1f"),
    ("linkRxMB/s", 10, "link_rx_bps", 1e6, ".1f"), ("procMiB", 7, "process_mem", MIB, ".0f"),
]


def top_header() -> str:
    """The column line `llmtop top` prints first (starts with '#', like nvidia-smi dmon)."""
    return "#" + f"{'time_s':>9}" + "".join(f" {h:>{w}}" for h, w, *_ in _TOP_COLUMNS)


def top_lines(samples: Sequence[GpuSample], t0_ns: int | None = None) -> str:
    """One line per sample; time_s counts from t0_ns (default: the first sample's stamp)."""
    if not samples:
        return ""
    t0 = samples[0].t_ns if t0_ns is None else t0_ns
    lines = []
    for s in samples:
        cells = [f"{(s.t_ns - t0) / 1e9:>10.3f}"]
        for _, width, name, scale, fmt in _TOP_COLUMNS:
            value = getattr(s, name)
            if value is None:
                cells.append(f"{NA:>{width}}")
            else:
                cells.append(f"{(value / scale if scale != 1 else value):>{width}{fmt}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def run_top(interval_s: float = 1.0, count: int | None = None, out: TextIO = sys.stdout, *,
            backend: GpuBackend | None = None, pid: int | None = None) -> int:
    """Prints samples every interval_s, `count` polls or until interrupted; returns the exit
    code (1 when no GPU backend loads, after one '#' line saying why)."""
    own = backend is None
    gpu = detect_backend() if backend is None else backend
    try:
        if isinstance(gpu, NoGpuBackend):
            out.write(f"# no GPU backend: {'; '.join(gpu.reasons)}\n")
            out.flush()
            return 1
        out.write(top_header() + "\n")
        t0 = time.perf_counter_ns()
        next_t = time.perf_counter()
        polls = 0
        while count is None or polls < count:
            out.write(top_lines(gpu.sample(pid), t0_ns=t0) + "\n")
            out.flush()
            polls += 1
            next_t += interval_s
            if count is None or polls < count:
                time.sleep(max(0.0, next_t - time.perf_counter()))
        return 0
    finally:
        if own:
            gpu.close()
