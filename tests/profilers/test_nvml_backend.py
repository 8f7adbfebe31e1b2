"""NvmlBackend against the fake pynvml, and the fake against the real nvidia-ml-py."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from fakes.loader import load_fake, use_fake
from llmtop.profilers.gpu import NoGpuBackend, detect_backend
from llmtop.profilers.nvml import NvmlBackend, sysfs_bus_id
from llmtop.profilers.topology import recommend_tp_set

GIB = 1024**3


def test_fake_mirrors_the_installed_nvidia_ml_py(monkeypatch):
    """Every function, constant and error class the fake defines exists in the real pynvml
    with the same parameters and value; otherwise the backend could pass here and fail on a
    real GPU."""
    real = pytest.importorskip("pynvml")
    assert Path(real.__file__).name == "pynvml.py" and "site-packages" in real.__file__
    fake = load_fake(monkeypatch, "pynvml")
    checked = 0
    for name, obj in vars(fake).items():
        if name.startswith("nvml") and inspect.isfunction(obj) and name != "nvmlFriendlyObject":
            real_params = list(inspect.signature(getattr(real, name)).parameters)
            assert list(inspect.signature(obj).parameters) == real_params, name
            checked += 1
        elif name.startswith("NVML_") and isinstance(obj, int):
            assert getattr(real, name) == obj, name
            checked += 1
        elif name.startswith("NVMLError_"):
            assert getattr(real, name).__name__ == name
            assert real.NVMLError._valClassMapping[obj(0).value].__name__ == name
            checked += 1
    for struct in ("c_nvmlMemory_t", "c_nvmlUtilization_t", "nvmlPciInfo_t",
                   "c_nvmlFieldValue_t", "c_nvmlValue_t"):
        assert [f[0] for f in getattr(fake, struct)._fields_] == \
            [f[0] for f in getattr(real, struct)._fields_], struct
    assert checked > 60


def _gpus(fake, n: int, **kwargs) -> list:
    return [fake.FakeGpu(bus_id=f"00000000:{0x17 + 0x20 * i:02X}:00.0",
                         uuid=f"GPU-fake-{i}", **kwargs) for i in range(n)]


def test_library_missing_gives_a_one_line_reason(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    fake.configure([], library_missing=True)
    use_fake(monkeypatch, "amdsmi", installed=False)
    backend = detect_backend()
    assert isinstance(backend, NoGpuBackend)
    assert backend.reasons == [
        "NVML: NVML Shared Library Not Found (NVMLError_LibraryNotFound)",
        "amdsmi: not installed"]
    assert backend.devices() == [] and backend.sample() == []


def test_no_gpu_visible_is_a_reason_too(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    fake.configure([])
    use_fake(monkeypatch, "amdsmi", installed=False)
    assert detect_backend().reasons[0] == "NVML: driver loaded but no NVIDIA GPU visible"


def test_several_gpus_with_units_converted(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 3, util_gpu=87, util_memory=41, memory_used=20 * GIB,
                 power_mw=512_345, energy_mj=7_250_000)
    gpus[2].name = "NVIDIA H200"
    gpus[1].processes = {4242: 3 * GIB, 99: GIB}
    fake.configure(gpus)
    backend = detect_backend()
    assert isinstance(backend, NvmlBackend)
    devices = backend.devices()
    assert [d.index for d in devices] == [0, 1, 2]
    assert devices[2].name == "NVIDIA H200"
    assert devices[1].pci_bus_id == "0000:37:00.0"  # sysfs form, for numa.py
    assert devices[0].power_cap_w == 700.0 and devices[0].memory_total == 80 * GIB
    samples = backend.sample(pid=4242)
    assert len(samples) == 3
    s = samples[0]
    assert (s.util_pct, s.mem_util_pct) == (87, 41)
    assert s.power_w == pytest.approx(512.345)  # milliwatts -> W
    assert s.energy_j == pytest.approx(7250.0)  # millijoules -> J
    assert s.mem_used == 20 * GIB and s.mem_total == 80 * GIB
    assert (s.temp_c, s.temp_mem_c, s.temp_hotspot_c) == (31, 35, None)  # NVML has no hotspot
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (345, 2619)
    assert [x.process_mem for x in samples] == [None, 3 * GIB, None]
    assert samples[0].t_ns <= samples[1].t_ns <= samples[2].t_ns
    backend.close()


def test_a_field_the_device_lacks_is_none_and_the_rest_still_reads(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 2)
    gpus[0].unsupported = {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage",
                           "nvmlDeviceGetUtilizationRates"}
    gpus[0].mem_temp_c = None
    fake.configure(gpus)
    backend = NvmlBackend()
    first, second = backend.sample()
    assert (first.energy_j, first.power_w, first.util_pct, first.mem_util_pct,
            first.temp_mem_c) == (None,) * 5
    assert first.mem_used is not None and first.sm_clock_mhz == 345
    assert second.energy_j is not None and second.power_w == 70.0 and second.temp_mem_c == 35
    assert backend.errors == {}  # "not supported" is not an error worth reporting


def test_unexpected_errors_are_kept_not_raised(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    fake.configure(_gpus(fake, 1))
    backend = NvmlBackend()

    def lost(handle):
        raise fake.NVMLError(fake.NVML_ERROR_GPU_IS_LOST)
    monkeypatch.setattr(fake, "nvmlDeviceGetPowerUsage", lost)
    assert backend.sample()[0].power_w is None
    assert backend.errors[0, "power"] == "NVMLError_GpuIsLost: GPU is lost"


def test_pcie_and_nvlink_rates_come_from_byte_counters(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 2)
    gpus[0].nvlinks = [gpus[1].bus_id] * 4
    gpus[1].nvlinks = [gpus[0].bus_id] * 4
    fake.configure(gpus)
    backend = NvmlBackend()
    first = backend.sample()[0]
    assert first.pcie_tx_bps is None and first.link_tx_bps is None  # no previous poll yet
    gpus[0].pcie_tx_bytes += 10**9
    gpus[0].pcie_rx_bytes += 5 * 10**8
    second = backend.sample()[0]
    dt = (second.t_ns - first.t_ns) / 1e9
    assert second.pcie_tx_bps == pytest.approx(1e9 / dt)
    assert second.pcie_rx_bps == pytest.approx(5e8 / dt)
    assert second.link_tx_bps is None  # GPU 1's turn to read its links
    gpus[0].nvlink_tx_kib += 1024**2  # per link: 4 links x 1 GiB since the first poll
    third = backend.sample()[0]
    dt = (third.t_ns - first.t_ns) / 1e9
    assert third.link_tx_bps == pytest.approx(4 * GIB / dt)
    assert third.link_rx_bps == 0
    fourth = backend.sample()[0]
    assert (fourth.link_tx_bps, fourth.link_rx_bps) == (third.link_tx_bps, 0)  # kept between turns


def test_one_gpu_reads_its_nvlink_counters_per_poll(monkeypatch):
    """18 links' counters took ~60 ms per H200: a poll reads them for one GPU, in turn."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 4)
    for gpu in gpus:
        gpu.nvlinks = [other.bus_id for other in gpus if other is not gpu] * 6
    fake.configure(gpus)
    backend = NvmlBackend()
    asked: list[list[int]] = []
    real = fake.nvmlDeviceGetFieldValues

    def counting(handle, ids):
        asked.append([i for i in ids if isinstance(i, tuple)])
        return real(handle, ids)
    monkeypatch.setattr(fake, "nvmlDeviceGetFieldValues", counting)
    turns = []
    for _ in range(8):
        asked.clear()
        backend.sample()
        with_links = [n for n, ids in enumerate(asked) if ids]
        assert len(with_links) == 1 and len(asked[with_links[0]]) == 2 * 18
        turns.append(with_links[0])
    assert turns == [0, 1, 2, 3, 0, 1, 2, 3]


def test_nvlink_pairs_beat_pcie_in_the_matrix_and_the_recommendation(monkeypatch):
    """Four PCIe cards, bridged in pairs 0-1 and 2-3 with 4 NVLinks each (A100 PCIe style).
    Without NVLink the same box's best pair is the one behind one PCIe switch."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 4)
    gpus[0].nvlinks = [gpus[1].bus_id] * 4 + [None] * 8
    gpus[1].nvlinks = [gpus[0].bus_id] * 4 + [None] * 8
    gpus[2].nvlinks = [gpus[3].bus_id] * 4 + [None] * 8
    gpus[3].nvlinks = [gpus[2].bus_id] * 4 + [None] * 8
    levels = {(0, 1): fake.NVML_TOPOLOGY_NODE, (2, 3): fake.NVML_TOPOLOGY_NODE,
              (1, 2): fake.NVML_TOPOLOGY_SINGLE}
    fake.configure(gpus, levels)
    matrix = NvmlBackend().topology()
    assert matrix.link(0, 1).label == "NV4" and matrix.link(0, 1).kind == "nvlink"
    assert matrix.link(0, 1).bandwidth_gbps == pytest.approx(4 * 25.781)
    assert matrix.link(1, 2).label == "PIX" and matrix.link(0, 3).label == "SYS"
    assert matrix.link(0, 0).label == "X"
    assert recommend_tp_set(matrix, 2) == [0, 1]

    for gpu in gpus:
        gpu.nvlinks = None  # the same box without bridges: NVML says NotSupported
    fake.configure(gpus, levels)
    matrix = NvmlBackend().topology()
    assert {matrix.link(i, j).kind for i in range(4) for j in range(4) if i != j} == {"pcie"}
    assert recommend_tp_set(matrix, 2) == [1, 2]  # behind one PCIe switch (PIX)


def test_nvswitch_links_connect_every_pair(monkeypatch):
    """On an HGX H100 every GPU's 18 links end at NVSwitches, not at another GPU."""
    fake = load_fake(monkeypatch, "pynvml")
    gpus = _gpus(fake, 8)
    for gpu in gpus:
        gpu.nvlinks = [f"00000000:{0xA0 + link % 4:02X}:00.0" for link in range(18)]
    fake.configure(gpus)
    matrix = NvmlBackend().topology()
    labels = {matrix.link(i, j).label for i in range(8) for j in range(8) if i != j}
    assert labels == {"NV18"}
    assert recommend_tp_set(matrix, 4) == [0, 1, 2, 3]


def test_bus_id_conversion():
    assert sysfs_bus_id(b"00000000:CA:00.0") == "0000:ca:00.0"
    assert sysfs_bus_id("00000001:1B:00.1") == "0001:1b:00.1"
