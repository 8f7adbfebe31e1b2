"""NvmlBackend when NVML itself fails: the vendor's own error classes, raised by the fake from
the calls that start the backend (count, handle by index, name, NVLink state, remote PCI info)
and from close(). A GPU that fails reads n/a with the error in one line, the others keep
working; a backend that cannot start is one line."""

from __future__ import annotations

import pytest
from fakes.loader import load_fake, use_fake
from llmtop.profilers.gpu import NoGpuBackend, detect_backend
from llmtop.profilers.nvml import NvmlBackend

FAULTS = ["NVML_ERROR_UNKNOWN", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_GPU_IS_LOST"]
NAMES = {"NVML_ERROR_UNKNOWN": "NVMLError_Unknown: Unknown Error",
         "NVML_ERROR_NO_PERMISSION": "NVMLError_NoPermission: Insufficient Permissions",
         "NVML_ERROR_GPU_IS_LOST": "NVMLError_GpuIsLost: GPU is lost"}


def linked_pair(fake, **faults) -> list:
    """Two GPUs joined by 18 NVLinks, with `faults` configured."""
    gpus = [fake.FakeGpu(bus_id="00000000:17:00.0", uuid="GPU-a"),
            fake.FakeGpu(bus_id="00000000:CA:00.0", uuid="GPU-b")]
    gpus[0].nvlinks = [gpus[1].bus_id] * 18
    gpus[1].nvlinks = [gpus[0].bus_id] * 18
    fake.configure(gpus, faults={k: getattr(fake, v) for k, v in faults.items()})
    return gpus


@pytest.mark.parametrize("fault", FAULTS)
def test_device_count_failing_is_one_line_and_no_backend(monkeypatch, fault):
    fake = load_fake(monkeypatch, "pynvml")
    use_fake(monkeypatch, "amdsmi", installed=False)
    linked_pair(fake, nvmlDeviceGetCount=fault)
    backend = detect_backend()
    assert isinstance(backend, NoGpuBackend)
    assert backend.reasons[0] == f"NVML: cannot count the GPUs ({NAMES[fault]})"
    assert fake._state["initialized"] == 0  # the library was shut down again


@pytest.mark.parametrize("fault", FAULTS)
def test_a_gpu_without_a_handle_reads_na_and_the_other_works(monkeypatch, fault):
    fake = load_fake(monkeypatch, "pynvml")
    gpus = linked_pair(fake, **{"nvmlDeviceGetHandleByIndex": fault})
    fake._state["faults"] = {("nvmlDeviceGetHandleByIndex", 1): getattr(fake, fault)}
    backend = NvmlBackend()
    good, bad = backend.devices()
    assert good.name == gpus[0].name and good.error is None and good.memory_total > 0
    assert (bad.name, bad.error, bad.memory_total) == ("n/a", NAMES[fault], None)
    first, second = backend.sample()
    assert first.util_pct == 0 and first.power_w == 70.0 and first.error is None
    assert second.error == NAMES[fault] and second.power_w is None and second.util_pct is None
    link = backend.topology().link(0, 1)
    assert (link.kind, link.label, link.bandwidth_gbps) == ("unknown", "n/a", None)
    assert link.error == f"GPU1: {NAMES[fault]}"
    backend.close()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_name_that_fails_is_na_and_listed(monkeypatch, fault):
    fake = load_fake(monkeypatch, "pynvml")
    linked_pair(fake)
    fake._state["faults"] = {("nvmlDeviceGetName", 0): getattr(fake, fault)}
    backend = NvmlBackend()
    assert backend.devices()[0].name == "n/a"
    assert backend.errors[0, "name"] == NAMES[fault]
    assert backend.devices()[1].name == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("call", ["nvmlDeviceGetNvLinkState", "nvmlDeviceGetNvLinkRemotePciInfo"])
@pytest.mark.parametrize("fault", FAULTS)
def test_nvlink_queries_failing_leave_the_pair_unknown_not_pcie(monkeypatch, fault, call):
    """One GPU's NVLink census failing: its partner's census still shows the 18 links; both
    failing: the pair is unknown, never an invented PCIe path."""
    fake = load_fake(monkeypatch, "pynvml")
    linked_pair(fake)
    fake._state["faults"] = {(call, 0): getattr(fake, fault)}
    backend = NvmlBackend()
    assert backend.errors[0, "nvlink"] == NAMES[fault]
    # a lost GPU is lost for every pair; otherwise the partner's census still counts the links
    expected = "n/a" if fault == "NVML_ERROR_GPU_IS_LOST" else "NV18"
    assert backend.topology().link(0, 1).label == expected
    backend.close()

    fake._state["faults"] = {(call, 0): getattr(fake, fault), (call, 1): getattr(fake, fault)}
    backend = NvmlBackend()
    link = backend.topology().link(1, 0)
    assert (link.kind, link.label) == ("unknown", "n/a")
    assert NAMES[fault] in link.error
    samples = backend.sample()
    if fault != "NVML_ERROR_GPU_IS_LOST":  # an unknown census still leaves the GPU readable
        assert all(s.error is None and s.power_w == 70.0 for s in samples)


def test_a_gpu_lost_while_running_is_asked_nothing_more(monkeypatch):
    fake = load_fake(monkeypatch, "pynvml")
    linked_pair(fake)
    backend = NvmlBackend()
    fake._state["faults"] = {("*", 1): fake.NVML_ERROR_GPU_IS_LOST}
    calls = []
    real = fake._gpu
    monkeypatch.setattr(fake, "_gpu", lambda h, f: calls.append(h.contents.index) or real(h, f))
    first, lost = backend.sample()
    assert first.error is None and first.power_w == 70.0
    assert lost.error == NAMES["NVML_ERROR_GPU_IS_LOST"] and lost.power_w is None
    calls.clear()
    again = backend.sample()
    assert again[1].error == NAMES["NVML_ERROR_GPU_IS_LOST"]
    assert 1 not in calls and 0 in calls


@pytest.mark.parametrize("fault", FAULTS)
def test_close_never_raises(monkeypatch, fault):
    fake = load_fake(monkeypatch, "pynvml")
    linked_pair(fake, nvmlShutdown=fault)
    backend = NvmlBackend()
    backend.close()
    assert backend.errors[-1, "shutdown"] == NAMES[fault]


def test_the_fault_injection_really_raises_the_vendor_class(monkeypatch):
    """Guards the tests above: the fake raises pynvml's own subclass from the configured call."""
    fake = load_fake(monkeypatch, "pynvml")
    linked_pair(fake, nvmlDeviceGetCount="NVML_ERROR_GPU_IS_LOST")
    fake.nvmlInit()
    with pytest.raises(fake.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetCount()


def test_an_unforeseen_exception_at_start_is_a_reason_line(monkeypatch):
    """Not even an NVMLError (a broken ctypes binding): detection still ends in one line."""
    fake = load_fake(monkeypatch, "pynvml")
    use_fake(monkeypatch, "amdsmi", installed=False)
    linked_pair(fake)

    def broken():
        raise OSError("libnvidia-ml.so.1: cannot read file data")
    monkeypatch.setattr(fake, "nvmlDeviceGetCount", broken)
    backend = detect_backend()
    assert isinstance(backend, NoGpuBackend)
    assert backend.reasons[0] == ("NVML: could not start (OSError: libnvidia-ml.so.1: cannot "
                                  "read file data)")
    assert fake._state["initialized"] == 0
