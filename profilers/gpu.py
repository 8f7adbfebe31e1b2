"""The vendor-neutral GPU interface: what every backend reports, and how one is chosen.

Every figure a device cannot give is None, so the UI shows "n/a" instead of a made-up zero.
Samples are stamped with time.perf_counter_ns(), the clock the engine stamps tokens with (on
Linux it is CLOCK_MONOTONIC, system-wide), so a token can be matched to the samples around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .topology import TopologyMatrix


@dataclass
class GpuStatic:
    """What does not change while the device is up; read once at start."""

    index: int
    name: str
    vendor: str
    uuid: str | None = None
    pci_bus_id: str | None = None  # sysfs form, "0000:17:00.0", so numa.py can find the device
    memory_total: int | None = None  # bytes
    power_cap_w: float | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    # The vendor library's NUMA answer (numa.py falls back to sysfs and names the source):
    numa_node: int | None = None      # the node the library names, None when it names none
    numa_source: str | None = None    # which call said so, e.g. "NVML memory affinity"
    cpu_affinity: list[int] | None = None  # the CPUs the library calls close to the GPU
    error: str | None = None  # one line: why this GPU cannot be read (its figures are n/a)


@dataclass
class GpuSample:
    """One poll of one device.

    util_pct and mem_util_pct are the driver's own averages over its sampling window (NVML: 1/6 s
    to 1 s depending on the product; amdsmi: the SMU's running average), not instantaneous busy
    flags: a 10 Hz series of them is smooth by construction. Power, memory and clocks are fresher.
    Rates (pcie_*, link_*) are bytes/s from counter deltas between two polls; the first poll of a
    device has none.
    """

    t_ns: int
    index: int
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None  # bytes
    power_w: float | None = None
    power_cap_w: float | None = None
    temp_c: float | None = None  # edge / the GPU's main sensor
    temp_hotspot_c: float | None = None
    temp_mem_c: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    energy_j: float | None = None  # since driver load
    pcie_tx_bps: float | None = None
    pcie_rx_bps: float | None = None
    link_tx_bps: float | None = None  # NVLink / xGMI
    link_rx_bps: float | None = None
    process_mem: int | None = None  # bytes the watched pid holds on this device
    error: str | None = None  # one line: why this GPU gave no reading (lost, no permission)


class GpuBackend(Protocol):
    """The one interface the sampler, `llmtop info` and `llmtop top` use."""

    name: str

    def devices(self) -> list[GpuStatic]:
        """Static facts, one entry per visible device."""

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        """One poll of every device; `pid` selects whose GPU memory goes in process_mem."""

    def topology(self) -> TopologyMatrix:
        """The GPU-to-GPU link matrix."""

    def describe(self) -> dict[str, str]:
        """Library and driver versions, for `llmtop info`."""

    def close(self) -> None:
        """Releases the vendor library."""


@dataclass
class NoGpuBackend:
    """Stands in when no vendor library loads; `reasons` says why, one line per backend."""

    reasons: list[str] = field(default_factory=list)
    name: str = "none"

    def devices(self) -> list[GpuStatic]:
        return []

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        return []

    def topology(self) -> TopologyMatrix:
        return TopologyMatrix(source="none", indices=[], links=[])

    def describe(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


class BackendUnavailable(Exception):
    """A backend could not start; the message is the one line shown to the user."""


def error_line(exc: BaseException) -> str:
    """A vendor exception as one line: its class (NVMLError_GpuIsLost, AmdSmiLibraryException)
    and its text, whose line breaks (amdsmi's "Error code:\\n\\t2 | ...") become spaces."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def mask_members(words: Any) -> list[int]:
    """The members of a bitmask given as 64-bit words (NVML's and amdsmi's affinity arrays):
    bit b of word w is member 64 * w + b."""
    return [64 * w + b for w, word in enumerate(words) for b in range(64) if int(word) >> b & 1]


def detect_backend() -> GpuBackend:
    """NVML first, then amdsmi, else NoGpuBackend carrying each one's reason.

    NVML goes first because importing pynvml is free and harmless, while importing amdsmi on a
    machine without ROCm prints to stdout and raises KeyError (amdsmi_backend captures stdout
    while it imports, so call this before a UI starts drawing).
    """
    from .amdsmi_backend import AmdSmiBackend  # imported here: both modules import this one
    from .nvml import NvmlBackend

    reasons = []
    for backend_class in (NvmlBackend, AmdSmiBackend):
        try:
            return backend_class()
        except BackendUnavailable as exc:
            reasons.append(str(exc))
        except Exception as exc:  # a vendor call the backend did not expect to fail
            reasons.append(f"{backend_class.name}: could not start ({error_line(exc)})")
    return NoGpuBackend(reasons=reasons)
