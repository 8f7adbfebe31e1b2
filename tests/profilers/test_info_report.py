"""`llmtop info` / `llmtop top` text and JSON, on fake NVIDIA and AMD machines."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from fakes.loader import load_fake, use_fake
from fakes.machines import mi250_gpus, mi250_pairs
from llmtop.profilers.amdsmi_backend import AmdSmiBackend
from llmtop.profilers.gpu import GpuSample, NoGpuBackend
from llmtop.profilers.nvml import NvmlBackend
from llmtop.profilers.report import (
    format_cpulist,
    info_dict,
    info_text,
    run_top,
    top_header,
    top_lines,
)

GIB = 1024**3


@pytest.fixture
def nvidia_pair(monkeypatch):
    """Two H100s joined by NVLink, one per socket of a fixture host with balancing on."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = [fake.FakeGpu(bus_id="00000000:17:00.0", uuid="GPU-a"),
            fake.FakeGpu(bus_id="00000000:CA:00.0", uuid="GPU-b")]
    gpus[0].nvlinks = [gpus[1].bus_id] * 18
    gpus[1].nvlinks = [gpus[0].bus_id] * 18
    gpus[1].unsupported = {"nvmlDeviceGetPowerUsage"}
    fake.configure(gpus)
    return fake


@pytest.fixture
def host_root(tmp_path):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/numa_balancing").write_text("1\n")
    allowed = sorted(os.sched_getaffinity(0))
    for node, bus in ((0, "0000:17:00.0"), (1, "0000:ca:00.0")):
        d = tmp_path / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(",".join(map(str, allowed)) if node == 0 else "64-127")
        (d / "meminfo").write_text(f"Node {node} MemTotal: 1048576 kB\n"
                                   f"Node {node} MemFree: 524288 kB\n")
        p = tmp_path / "sys/bus/pci/devices" / bus
        p.mkdir(parents=True)
        (p / "numa_node").write_text(f"{node}\n")
    return str(tmp_path)


def test_info_dict_is_json_and_complete(nvidia_pair, host_root):
    info = info_dict(NvmlBackend(), pid=os.getpid(), root=host_root)
    text = json.dumps(info, allow_nan=False)
    assert json.loads(text)["gpu"]["backend"] == "NVML"
    assert [d["pci_bus_id"] for d in info["gpu"]["devices"]] == ["0000:17:00.0", "0000:ca:00.0"]
    assert info["gpu"]["versions"] == {"driver": "550.54.15", "nvml": "12.550.54.15"}
    assert info["numa"]["balancing"] == 1 and info["numa"]["gpu_nodes"] == {0: 0, 1: 1}
    assert info["numa"]["local"] == {0: True, 1: False}
    assert info["topology"]["links"][0][1]["label"] == "NV18"
    assert info["topology"]["recommended_tp"]["2"]["gpus"] == [0, 1]
    assert info["host"]["cpus"] >= 1 and info["host"]["mem_total"] > 0


def test_info_text_reads_like_a_report(nvidia_pair, host_root):
    text = info_text(NvmlBackend(), pid=os.getpid(), root=host_root)
    lines = text.splitlines()
    assert lines[0] == "GPU backend: NVML (driver 550.54.15, nvml 12.550.54.15)"
    assert ("  GPU1: NVIDIA H100 80GB HBM3, 80.0 GiB, cap 700 W, bus 0000:ca:00.0, "
            "NUMA node 1 (sysfs)") in lines
    assert "NUMA: balancing 1 (on)" in lines
    assert any("echo 0 > /proc/sys/kernel/numa_balancing" in line for line in lines)
    assert "    GPU0 (node 0): threads on it, memory unknown" in lines
    assert "    GPU1 (node 1): threads NOT on it, memory unknown" in lines
    assert f"      fix: taskset -a -c -p 64-127 {os.getpid()}" in lines
    assert "  node 1: CPUs 64-127, 1.0 GiB (0.5 GiB free)" in lines
    assert "Topology (NVML):" in lines
    assert any(line.split() == ["GPU0*", "X", "NV18", "464G"] for line in lines)
    assert "  TP=2: GPUs 0,1: weakest link it must cross 464.058 GB/s" in lines


def test_info_on_a_machine_without_gpus(monkeypatch, host_root):
    fake = load_fake(monkeypatch, "pynvml")
    fake.configure([], library_missing=True)
    use_fake(monkeypatch, "amdsmi", installed=False)
    text = info_text(root=host_root)
    assert text.splitlines()[:3] == [
        "GPU backend: none",
        "  not available: NVML: NVML Shared Library Not Found (NVMLError_LibraryNotFound)",
        "  not available: amdsmi: not installed"]
    assert "Topology" not in text


def test_info_on_the_mi250_box(monkeypatch, host_root):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake))
    info = info_dict(AmdSmiBackend(), root=host_root)
    assert info["gpu"]["versions"] == {"amdsmi": "25.5.1", "rocm": "7.0.2"}
    assert {k: v["gpus"] for k, v in info["topology"]["recommended_tp"].items()} == {
        "2": [0, 1], "4": [0, 1, 6, 7], "8": list(range(8))}
    assert info["topology"]["recommended_tp"]["4"]["weakest_link"] == 100.0


def test_top_lines_one_per_gpu_aligned_with_the_header():
    samples = [GpuSample(t_ns=1_000_000_000, index=0, util_pct=87, mem_util_pct=41,
                         mem_used=20 * GIB, mem_total=80 * GIB, power_w=512.3, power_cap_w=700,
                         temp_c=61, temp_mem_c=70, sm_clock_mhz=1980, mem_clock_mhz=2619,
                         energy_j=7250.5, pcie_tx_bps=1.5e9, process_mem=3 * GIB),
               GpuSample(t_ns=1_250_000_000, index=1)]
    header = top_header()
    lines = top_lines(samples).splitlines()
    assert len(lines) == 2
    assert header.startswith("#") and len(header) == len(lines[0]) == len(lines[1])
    assert lines[0].split() == ["0.000", "0", "87", "41", "20480", "81920", "512.3", "700", "61",
                                "n/a", "70", "1980", "2619", "7250.5", "1500.0", "n/a", "n/a",
                                "n/a", "3072"]
    assert lines[1].split()[:3] == ["0.250", "1", "n/a"] and lines[1].split()[3:] == ["n/a"] * 16
    assert top_lines([]) == ""


def test_run_top_prints_count_polls(nvidia_pair):
    out = io.StringIO()
    assert run_top(0.01, 3, out, backend=NvmlBackend()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == top_header() and lines[1].startswith("#   time_s host  cpu%")
    assert len(lines) == 2 + 3 * 3
    assert [line.split()[1] for line in lines[2:]] == ["0", "1", "host"] * 3
    assert lines[3].split()[6] == "n/a"  # GPU1's power is not supported


def test_run_top_without_a_gpu_streams_the_host_and_succeeds(host_root):
    """Like nvidia-smi dmon: no GPU is one line, then CPU, memory and NUMA rows, exit 0."""
    out = io.StringIO()
    backend = NoGpuBackend(reasons=["NVML: gone", "amdsmi: not installed"])
    assert run_top(0.01, 2, out, backend=backend, root=host_root) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "# no GPU: NVML: gone; amdsmi: not installed; host rows only"
    assert lines[1].split() == ["#", "time_s", "host", "cpu%", "memUsedMiB", "memAvailMiB",
                                "load1", "n0FreeMiB", "n1FreeMiB"]
    assert len(lines) == 4 and all(line.split()[1] == "host" for line in lines[2:])
    assert lines[3].split()[-2:] == ["512", "512"]  # each node's free memory, MiB
    assert lines[2].split()[2] == "n/a" and float(lines[3].split()[2]) >= 0  # no cpu% baseline yet
    assert all(len(line) == len(lines[1]) for line in lines[2:])


def test_format_cpulist():
    assert format_cpulist([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpulist([]) == ""


def test_a_link_count_is_not_printed_as_bandwidth():
    """Seen on 4 x H200 under a VM: NVML gave NV18 links but no link speed."""
    from llmtop.profilers.report import matrix_text

    from llmtop.profilers.report import topology_dict
    from llmtop.profilers.topology import Link, TopologyMatrix

    link = Link(kind="nvlink", label="NV18", links=18)
    me = Link(kind="self", label="X")
    lines = matrix_text(topology_dict(TopologyMatrix("NVML", [0, 1], [[me, link], [link, me]])))
    assert lines[-1] == "  TP=2: GPUs 0,1: every pair NV18 (no NVLink speed reported)"
    assert lines[1].split() == ["GPU0*", "X", "NV18"]


def test_the_uneven_mi250_fabric_reads_as_hops_weights_and_why(monkeypatch, host_root):
    """Every pair of the 8-die box used to read "XGMI", and two-hop pairs sat under "direct-
    link bandwidth"; now the cells say hops, weight and direct bandwidth, the TP=4 set is
    starred, and one line per degree says why that set."""
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake))
    lines = info_text(AmdSmiBackend(), root=host_root).splitlines()
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in lines)
            if cells[0].startswith("GPU") and "X" in cells}
    assert rows["GPU0*"][:4] == ["GPU0*", "X", "1h w15 200G", "1h w15 50G"]
    assert rows["GPU2"][:5] == ["GPU2", "1h w15 50G", "2h w30", "X", "1h w15 200G"]
    assert "direct-link bandwidth" not in "\n".join(lines)
    assert ("  TP=4: GPUs 0,1,6,7: weakest link it must cross 100 GB/s; 3 of 6 pairs one hop, "
            "the others up to two hops") in lines
    assert "  TP=2: GPUs 0,1: weakest link it must cross 200 GB/s; every pair one hop" in lines
    header = next(line for line in lines if line.split()[:1] == ["GPU0*"] and "X" not in line)
    assert header.split() == ["GPU0*", "GPU1*", "GPU2", "GPU3", "GPU4", "GPU5", "GPU6*", "GPU7*"]
