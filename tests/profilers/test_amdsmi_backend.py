"""AmdSmiBackend against the fake amdsmi (mirroring amdsmi 7.0.2)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from fakes.loader import load_fake, use_fake
from fakes.machines import MI250_PUBLISHED_BEST, mi250_gpus, mi250_pairs
from llmtop.profilers import amdsmi_backend
from llmtop.profilers.amdsmi_backend import AmdSmiBackend
from llmtop.profilers.gpu import BackendUnavailable, NoGpuBackend, detect_backend
from llmtop.profilers.topology import recommend_tp_set

MIB = 1024**2
REAL_API = json.loads((Path(__file__).parents[1] / "fakes" / "amdsmi_7_0_2_api.json").read_text())


def test_fake_and_backend_match_the_real_amdsmi_api(monkeypatch):
    """The names, parameters and enum values recorded from the real amdsmi 7.0.2 wheel: the
    fake must agree with them, and the backend may only call functions that exist."""
    fake = load_fake(monkeypatch, "amdsmi")
    functions = {n: f for n, f in vars(fake).items()
                 if n.startswith("amdsmi_") and inspect.isfunction(f)}
    assert len(functions) >= 20
    for name, function in functions.items():
        assert list(inspect.signature(function).parameters) == REAL_API["functions"][name], name
    for enum_name, members in REAL_API["enums"].items():
        for member in getattr(fake, enum_name):
            assert members[member.name] == member.value, (enum_name, member.name)
    for name, value in vars(fake).items():
        if name.startswith("AMDSMI_STATUS_"):
            assert REAL_API["status"][name] == value, name
    called = set(re.findall(r"smi\.(amdsmi_\w+)", inspect.getsource(amdsmi_backend)))
    assert len(called) >= 15
    assert called <= set(REAL_API["functions"]), called - set(REAL_API["functions"])
    assert called <= set(functions), called - set(functions)


@pytest.fixture
def no_nvml(monkeypatch):
    """A machine where NVML is not there, so detection reaches amdsmi."""
    fake = load_fake(monkeypatch, "pynvml")
    fake.configure([], library_missing=True)


def test_import_without_rocm_is_a_reason_and_prints_nothing(monkeypatch, capsys, no_nvml):
    """The real package prints two lines and raises KeyError when libamd_smi.so is missing;
    a TUI must not see those lines, and the user must see why AMD is unavailable."""
    monkeypatch.setenv("FAKE_AMDSMI_NO_ROCM", "1")
    use_fake(monkeypatch, "amdsmi")
    backend = detect_backend()
    assert isinstance(backend, NoGpuBackend)
    assert backend.reasons[1] == (
        "amdsmi: ROCm library not loadable (/opt/rocm/lib/libamd_smi.so: cannot open shared "
        "object file: No such file or directory)")
    assert capsys.readouterr().out == ""


def test_the_fake_really_misbehaves_on_import(monkeypatch, capsys):
    """Guards the test above: without the capture, the noise and the KeyError do happen."""
    monkeypatch.setenv("FAKE_AMDSMI_NO_ROCM", "1")
    use_fake(monkeypatch, "amdsmi")
    with pytest.raises(KeyError, match="libamd_smi.so"):
        import amdsmi  # noqa: F401
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_init_failure_is_a_reason(monkeypatch):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure([fake.FakeAmdGpu()], init_error=fake.AMDSMI_STATUS_DRIVER_NOT_LOADED)
    with pytest.raises(BackendUnavailable, match=r"^amdsmi: init failed \(Error code: 34 \| "
                                                 r"AMDSMI_STATUS_DRIVER_NOT_LOADED"):
        AmdSmiBackend()


def test_mi250_dies_sample_with_units_and_na(monkeypatch, no_nvml):
    fake = load_fake(monkeypatch, "amdsmi")
    gpus = mi250_gpus(fake)
    gpus[0].gfx_activity, gpus[0].umc_activity = 93, 57
    gpus[0].vram_used = 30 * 1024**3
    gpus[0].processes = {4242: 2048 * MIB}
    gpus[3].temps = {"HOTSPOT": 70}  # edge and memory sensors missing
    gpus[5].unsupported = {"amdsmi_get_energy_count"}
    fake.configure(gpus, mi250_pairs(fake))
    backend = detect_backend()
    assert isinstance(backend, AmdSmiBackend)
    devices = backend.devices()
    assert len(devices) == 8 and devices[0].name == "AMD Instinct MI250X / MI250"
    assert devices[0].pci_bus_id == "0000:29:00.0" and devices[0].power_cap_w == 560.0
    assert devices[1].power_cap_w is None  # the second die reports no power cap
    samples = backend.sample(pid=4242)
    s = samples[0]
    assert (s.util_pct, s.mem_util_pct) == (93, 57)
    assert s.mem_used == 30 * 1024**3 and s.mem_total == 64 * 1024**3
    assert (s.power_w, s.power_cap_w) == (90, 560)
    assert (s.temp_c, s.temp_hotspot_c, s.temp_mem_c) == (35, 40, 45)
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (800, 1600)
    assert s.energy_j == pytest.approx(1_000_000 * 15.3 / 1e6)  # accumulator x uJ resolution
    assert s.process_mem == 2048 * MIB and samples[1].process_mem is None
    assert (samples[1].power_w, samples[1].power_cap_w) == (None, None)  # "N/A" and 0 W
    assert (samples[3].temp_c, samples[3].temp_hotspot_c, samples[3].temp_mem_c) == (None, 70, None)
    assert samples[5].energy_j is None and samples[4].energy_j is not None
    assert s.pcie_tx_bps is None  # amdsmi's PCIe throughput call blocks ~1 s: not polled
    assert backend.errors == {}
    backend.close()


def test_xgmi_rates_from_accumulated_kb(monkeypatch):
    fake = load_fake(monkeypatch, "amdsmi")
    gpus = mi250_gpus(fake)
    gpus[0].xgmi_read_kb = [0, 0, "N/A", "N/A", "N/A", "N/A", "N/A", "N/A"]
    gpus[0].xgmi_write_kb = [0, 0, "N/A", "N/A", "N/A", "N/A", "N/A", "N/A"]
    fake.configure(gpus, mi250_pairs(fake))
    backend = AmdSmiBackend()
    first = backend.sample()[0]
    gpus[0].xgmi_write_kb = [1024, 3072, "N/A", "N/A", "N/A", "N/A", "N/A", "N/A"]
    second = backend.sample()[0]
    dt = (second.t_ns - first.t_ns) / 1e9
    assert first.link_tx_bps is None
    assert second.link_tx_bps == pytest.approx(4096 * 1024 / dt)
    assert second.link_rx_bps == 0
    assert backend.sample()[1].link_tx_bps is None  # a die that reports only N/A


def test_unexpected_library_errors_are_kept(monkeypatch):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure([fake.FakeAmdGpu()])
    backend = AmdSmiBackend()

    def fails(processor_handle):
        raise fake.AmdSmiLibraryException(fake.AMDSMI_STATUS_INVAL)
    monkeypatch.setattr(fake, "amdsmi_get_gpu_activity", fails)
    assert backend.sample()[0].util_pct is None
    assert backend.errors[0, "activity"] == \
        "AmdSmiLibraryException: Error code: 1 | AMDSMI_STATUS_INVAL - Invalid parameters"


def test_mi250_topology_reads_links_and_the_recommender_uses_them(monkeypatch):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake))
    matrix = AmdSmiBackend().topology()
    same_package = matrix.link(0, 1)
    assert (same_package.kind, same_package.bandwidth_gbps, same_package.hops,
            same_package.weight) == ("xgmi", 200.0, 1, 15)
    assert matrix.link(0, 6).bandwidth_gbps == 100.0 and matrix.link(1, 3).bandwidth_gbps == 50.0
    assert matrix.link(0, 4).bandwidth_gbps is None and matrix.link(0, 4).hops == 2
    for k, best in MI250_PUBLISHED_BEST.items():
        assert recommend_tp_set(matrix, k) == best
