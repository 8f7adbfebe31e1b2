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

from .gpu import GpuBackend, GpuSample, NoGpuBackend, detect_backend, error_line
from .host import HostMonitor, HostSample
from .numa import (
    NumaNode,
    NumaStatus,
    fix_command,
    format_cpulist,
    memory_local,
    memory_share,
    nodes,
    numa_status,
)
from .topology import (
    TopologyMatrix,
    legend,
    link_errors,
    marked_size,
    matrix_rows,
    recommend,
    tp_sizes,
)

GIB = 1024**3
MIB = 1024**2
NA = "n/a"


def topology_dict(matrix: TopologyMatrix, tp: int | None = None) -> dict[str, Any]:
    """The matrix as links, readable rows (the marked TP set starred), the legend, each failed
    query, and the recommended set with its reason for each TP degree; `tp` is the engine's
    degree, whose set is the one marked."""
    recommended = {}
    for k in tp_sizes(len(matrix.indices)):
        rec = recommend(matrix, k)
        recommended[str(k)] = {"gpus": rec.gpus, "weakest_link": rec.weakest_link,
                               "why": rec.why, "degraded": rec.degraded}
    marked = marked_size(len(matrix.indices), tp)
    marked_gpus = recommended[str(marked)]["gpus"] if marked else []
    return {"source": matrix.source, "indices": matrix.indices,
            "links": [[dataclasses.asdict(link) for link in row] for row in matrix.links],
            "recommended_tp": recommended, "marked_tp": marked,
            "rows": matrix_rows(matrix, marked_gpus), "legend": legend(matrix),
            "errors": link_errors(matrix)}


def _guard(what: str, call: Any, errors: list[str], default: Any) -> Any:
    """call(), or `default` with one line in `errors`: `llmtop info` never shows a traceback."""
    try:
        return call()
    except Exception as exc:
        errors.append(f"{what}: {error_line(exc)}")
        return default


def info_dict(backend: GpuBackend | None = None, pid: int | None = None,
              root: str = "/") -> dict[str, Any]:
    """Everything `llmtop info` reports, JSON-ready. Detects (and closes) a backend when none
    is given; `pid` is the engine process whose NUMA locality to check. The topology is read
    before the errors are collected, so a failed topology query is listed too."""
    own = backend is None
    gpu = detect_backend() if backend is None else backend
    try:
        failures: list[str] = []
        devices = _guard("devices", gpu.devices, failures, [])
        versions = _guard("versions", gpu.describe, failures, {})
        topology = _guard("topology", lambda: topology_dict(gpu.topology()), failures, None)
        numa = numa_status(devices, pid=pid, root=root)
        mem = psutil.virtual_memory()
        return {
            "gpu": {
                "backend": gpu.name,
                "versions": versions,
                "unavailable": gpu.reasons if isinstance(gpu, NoGpuBackend) else [],
                "devices": [dataclasses.asdict(d) for d in devices],
                "errors": [f"GPU{i} {field}: {msg}" if i >= 0 else f"{field}: {msg}"
                           for (i, field), msg in sorted(getattr(gpu, "errors", {}).items())]
                + failures,
            },
            "host": {
                "cpus": psutil.cpu_count(logical=True),
                "allowed_cpus": format_cpulist(sorted(os.sched_getaffinity(0))),
                "mem_total": mem.total,
                "mem_available": mem.available,
                "load_avg": list(os.getloadavg()),
            },
            "numa": dataclasses.asdict(numa),
            "topology": topology or {"source": gpu.name, "indices": [], "links": []},
        }
    finally:
        if own:
            gpu.close()


def _gib(value: int | None) -> str:
    return NA if value is None else f"{value / GIB:.1f} GiB"


def matrix_text(topo: dict[str, Any]) -> list[str]:
    """The readable matrix (cells as topology.cell_text writes them, the marked TP set
    starred), its legend, one line per TP degree saying why that set, then each failed
    query."""
    rows = topo["rows"]
    width = max(len(cell) for row in rows for cell in row) + 2
    lines = ["  " + "".join(f"{cell:>{width}}" if k else f"{cell:<7}" for k, cell in enumerate(row))
             for row in rows]
    lines.append(f"  ({topo['legend']}; * = the recommended TP={topo['marked_tp']} set)"
                 if topo.get("marked_tp") else f"  ({topo['legend']})")
    lines += [f"  {rec['why']}" for rec in topo["recommended_tp"].values()]
    degraded = next((rec["degraded"] for rec in topo["recommended_tp"].values()
                     if rec["degraded"]), None)
    if degraded:
        lines.append(f"  recommendation {degraded}")
    lines += [f"  topology read error: {e}" for e in topo["errors"]]
    return lines


def _placement_lines(numa: dict[str, Any], status: Any) -> list[str]:
    """Per GPU: its node (and source), whether the engine's threads and memory are on it, and
    the one command that fixes a mismatch."""
    lines = []
    words = {True: "on it", False: "NOT on it", None: "unknown"}
    for index, local in numa["local"].items():
        node = numa["gpu_nodes"].get(index, -1)
        if node < 0:
            lines.append(f"    GPU{index}: node unknown (no vendor or sysfs answer)")
            continue
        share = memory_share(status, node)
        memory = words[memory_local(status, index)] + (
            f" ({share:.0%} of its pages on node {node})" if share is not None else "")
        lines.append(f"    GPU{index} (node {node}): threads {words[local]}, memory {memory}")
        fix = fix_command(status, index)
        if fix:
            lines.append(f"      fix: {fix}")
    return lines


def info_text(backend: GpuBackend | None = None, pid: int | None = None,
              root: str = "/") -> str:
    """info_dict() as the text `llmtop info` prints."""
    return render_info(info_dict(backend, pid=pid, root=root))


def render_info(info: dict[str, Any]) -> str:
    """An info_dict() as text (one reading serves both `llmtop info` and `--json`)."""
    gpu, host, numa, topo = info["gpu"], info["host"], info["numa"], info["topology"]
    versions = ", ".join(f"{k} {v}" for k, v in gpu["versions"].items())
    lines = [f"GPU backend: {gpu['backend']}" + (f" ({versions})" if versions else "")]
    lines += [f"  not available: {reason}" for reason in gpu["unavailable"]]
    for d in gpu["devices"]:
        if d["error"] and d["name"] == NA:
            lines.append(f"  GPU{d['index']}: n/a ({d['error']})")
            continue
        node = numa["gpu_nodes"].get(d["index"], -1)
        source = numa["gpu_node_sources"].get(d["index"], "unknown")
        cap = NA if d["power_cap_w"] is None else f"{d['power_cap_w']:.0f} W"
        lines.append(f"  GPU{d['index']}: {d['name']}, {_gib(d['memory_total'])}, cap {cap}, "
                     f"bus {d['pci_bus_id'] or NA}, NUMA node "
                     f"{f'{node} ({source})' if node >= 0 else NA}")
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
        lines += _placement_lines(numa, _status_from(numa))
    if topo["indices"]:
        lines.append(f"Topology ({topo['source']}):")
        lines += matrix_text(topo)
    return "\n".join(lines)


def _status_from(numa: dict[str, Any]) -> NumaStatus:
    """The NumaStatus back from its JSON form, for numa.py's verdicts."""
    fields = dict(numa, nodes=[NumaNode(**n) for n in numa["nodes"]])
    return NumaStatus(**fields)


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


def host_header(node_ids: Sequence[int]) -> str:
    """The column line of the host rows `llmtop top` prints each poll (CPU, memory, NUMA)."""
    return ("#" + f"{'time_s':>9}" + f" {'host':>4} {'cpu%':>5} {'memUsedMiB':>10} "
            f"{'memAvailMiB':>11} {'load1':>6}"
            + "".join(f" {f'n{i}FreeMiB':>10}" for i in node_ids))


def host_line(sample: HostSample, free: dict[int, int | None], t0_ns: int,
              cpu_known: bool = True) -> str:
    """One host row under host_header(); `free` is each NUMA node's free bytes. The first
    poll has no previous CPU reading to measure against, so its cpu% is n/a (cpu_known)."""
    load = f"{sample.load_avg[0]:>6.2f}" if sample.load_avg else f"{NA:>6}"
    cpu = f"{sample.cpu_pct:>5.1f}" if cpu_known else f"{NA:>5}"
    cells = "".join(f" {NA:>10}" if b is None else f" {b / MIB:>10.0f}" for b in free.values())
    return (f"{(sample.t_ns - t0_ns) / 1e9:>10.3f} {'host':>4} {cpu} "
            f"{sample.mem_used / MIB:>10.0f} {sample.mem_available / MIB:>11.0f} {load}" + cells)


def _start(backend: GpuBackend | None) -> GpuBackend:
    """The given backend, else the detected one; a detection that fails is a reason."""
    if backend is not None:
        return backend
    try:
        return detect_backend()
    except Exception as exc:
        return NoGpuBackend(reasons=[f"GPU telemetry: {error_line(exc)}"])


def run_top(interval_s: float = 1.0, count: int | None = None, out: TextIO = sys.stdout, *,
            backend: GpuBackend | None = None, pid: int | None = None, root: str = "/") -> int:
    """Prints a row per GPU and one host row (CPU, memory, each NUMA node's free memory) every
    interval_s, `count` polls or until interrupted, and returns 0. Without a GPU backend it
    says why on one '#' line and streams the host rows, as nvidia-smi dmon keeps going; a
    GPU's error is one '#' line when it first appears, its row reads n/a."""
    own = backend is None
    gpu = _start(backend)
    try:
        gpus = not isinstance(gpu, NoGpuBackend)
        if gpus:
            out.write(top_header() + "\n")
        else:
            out.write(f"# no GPU: {'; '.join(gpu.reasons) or 'none found'}; host rows only\n")
        node_ids = [n.id for n in nodes(root)]
        out.write(host_header(node_ids) + "\n")
        host = HostMonitor(pid)
        t0 = time.perf_counter_ns()
        next_t = time.perf_counter()
        polls = 0
        said: set[str] = set()
        while count is None or polls < count:
            if gpus:
                _top_gpus(gpu, pid, t0, out, said)
            free = {n.id: n.mem_free for n in nodes(root)}
            out.write(host_line(host.sample(), {i: free.get(i) for i in node_ids}, t0,
                                cpu_known=polls > 0) + "\n")
            out.flush()
            polls += 1
            next_t += interval_s
            if count is None or polls < count:
                time.sleep(max(0.0, next_t - time.perf_counter()))
        return 0
    finally:
        if own:
            gpu.close()


def _top_gpus(gpu: GpuBackend, pid: int | None, t0: int, out: TextIO, said: set[str]) -> None:
    """One poll's GPU rows, each new error once as a '#' line."""
    try:
        samples = gpu.sample(pid)
    except Exception as exc:  # a backend bug or a vendor surprise: this poll has no GPU rows
        samples = []
        notes = [f"# GPU poll failed: {error_line(exc)}"]
    else:
        notes = [f"# GPU{s.index}: {s.error}" for s in samples if s.error]
    for note in notes:
        if note not in said:
            said.add(note)
            out.write(note + "\n")
    if samples:
        out.write(top_lines(samples, t0_ns=t0) + "\n")
