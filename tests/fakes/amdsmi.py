"""A fake of ROCm's `amdsmi` Python package (mirrors amdsmi 7.0.2, py-interface) for machines
we describe.

Mirrored from the real package: function names and parameter names, the IntEnum classes and
their values, the exception classes (AmdSmiLibraryException carries err_code), the handle type
check (AmdSmiParameterException for anything that is not a processor handle), the result dicts
and their keys, the string "N/A" where a device lacks a value, and the import itself: with
FAKE_AMDSMI_NO_ROCM=1 in the environment, importing prints the same two lines to stdout and
raises KeyError('libamd_smi.so'), as the real package does on a machine without ROCm.

Tests load it as `amdsmi` through fakes.loader and describe the machine with configure(); its
`faults` make any call raise one of the package's own exceptions (AmdSmiLibraryException and
its Retry/Timeout subclasses, AmdSmiParameterException, AmdSmiKeyException), start-up and
shutdown included.

Modelled where the package's source does not decide it: a device whose KFD node has no NUMA
node (numa_node -1, as in many VMs) reads back through the uint32 as 4294967295, and
amdsmi_get_cpu_affinity_with_scope fails with NOT_INIT unless CPUs are described (the real
call first asks the CPU socket count, which needs amdsmi_init with AMD CPUs).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from enum import IntEnum

if os.environ.get("FAKE_AMDSMI_NO_ROCM") == "1":
    print("/opt/rocm/lib/libamd_smi.so: cannot open shared object file: "
          "No such file or directory")
    print("Unable to find libamd_smi.so library try installing amd-smi-lib "
          "from your package manager")
    _libraries: dict = {}
    # amdsmi_wrapper.py's first use of the library it failed to load: KeyError
    amdsmi_free_name_value_pairs = _libraries["libamd_smi.so"].amdsmi_free_name_value_pairs

# amdsmi_wrapper status codes used below
AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_NOT_YET_IMPLEMENTED = 3
AMDSMI_STATUS_TIMEOUT = 8
AMDSMI_STATUS_RETRY = 9
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_BUSY = 30
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 4294967295
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_AMD_APUS = 3
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8


class AmdSmiClkType(IntEnum):
    SYS = 0
    GFX = 0
    DF = 1
    DCEF = 2
    SOC = 3
    MEM = 4
    PCIE = 5
    VCLK0 = 6
    VCLK1 = 7
    DCLK0 = 8
    DCLK1 = 9


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2
    HBM_0 = 3
    HBM_1 = 4
    HBM_2 = 5
    HBM_3 = 6
    PLX = 7


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1
    MIN = 2
    MAX_HYST = 3
    MIN_HYST = 4
    CRITICAL = 5
    CRITICAL_HYST = 6
    EMERGENCY = 7
    EMERGENCY_HYST = 8
    CRIT_MIN = 9
    CRIT_MIN_HYST = 10
    OFFSET = 11
    LOWEST = 12
    HIGHEST = 13


class AmdSmiMemoryType(IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiAffinityScope(IntEnum):
    NUMA_SCOPE = 0
    SOCKET_SCOPE = 1


class AmdSmiLinkType(IntEnum):
    AMDSMI_LINK_TYPE_INTERNAL = 0
    AMDSMI_LINK_TYPE_XGMI = 2
    AMDSMI_LINK_TYPE_PCIE = 1
    AMDSMI_LINK_TYPE_NOT_APPLICABLE = 3
    AMDSMI_LINK_TYPE_UNKNOWN = 4


class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = {
            AMDSMI_STATUS_INVAL: "AMDSMI_STATUS_INVAL - Invalid parameters",
            AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
            AMDSMI_STATUS_NOT_YET_IMPLEMENTED:
                "AMDSMI_STATUS_NOT_YET_IMPLEMENTED - Feature not yet implemented",
            AMDSMI_STATUS_TIMEOUT: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
            AMDSMI_STATUS_RETRY: "AMDSMI_STATUS_RETRY - Retry operation",
            AMDSMI_STATUS_NO_PERM: "AMDSMI_STATUS_NO_PERM - Permission Denied",
            AMDSMI_STATUS_BUSY: "AMDSMI_STATUS_BUSY - Device busy",
            AMDSMI_STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
            AMDSMI_STATUS_DRIVER_NOT_LOADED:
                "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
        }.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self):
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_code(self):
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(AMDSMI_STATUS_RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(AMDSMI_STATUS_TIMEOUT)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, receivedValue, expectedType, msg=None):
        super().__init__(msg)
        self.err_code = None
        self.err_msg = msg or (f"Invalid parameter:\nActual type: {type(receivedValue)}\n"
                               f"Expected type: {expectedType}")

    def __str__(self):
        return self.err_msg


class AmdSmiKeyException(AmdSmiException):
    def __init__(self, key):
        super().__init__()
        self.key = key
        self.err_msg = "Key " + self.key + " is missing from dictionary"

    def __str__(self):
        return self.err_msg


class amdsmi_processor_handle(ctypes.c_void_p):
    """amdsmi_wrapper.amdsmi_processor_handle (a c_void_p); the fake stores the GPU index."""


# ---- the machine the fake describes ----------------------------------------------------------

@dataclass
class FakeAmdGpu:
    """One AMD GPU (or one MI250 die). Values may be "N/A" as the real dicts give them."""

    market_name: str = "AMD Instinct MI250X / MI250"
    bdf: str = "0000:c1:00.0"
    uuid: str = "51ff740f-0000-1000-8032-3f0ba4d1b5e9"
    vram_total: int = 64 * 1024**3
    vram_used: int = 10 * 1024**2
    gfx_activity: object = 0
    umc_activity: object = 0
    mm_activity: object = "N/A"
    current_socket_power: object = "N/A"  # MI300+ only
    average_socket_power: object = 90
    power_limit: object = 560
    power_cap_uw: int = 560_000_000
    temps: dict[str, int] = field(default_factory=lambda: {"EDGE": 35, "HOTSPOT": 40, "VRAM": 45})
    gfx_clk: int = 800
    mem_clk: int = 1600
    max_gfx_clk: int = 1700
    max_mem_clk: int = 1600
    energy_accumulator: int = 1_000_000
    counter_resolution: float = 15.3
    xgmi_read_kb: list = field(default_factory=lambda: ["N/A"] * 8)
    xgmi_write_kb: list = field(default_factory=lambda: ["N/A"] * 8)
    processes: dict[int, int] = field(default_factory=dict)  # pid -> VRAM bytes
    unsupported: set[str] = field(default_factory=set)  # function names raising NOT_SUPPORTED
    numa_node: int | None = None  # None: the KFD knows none (-1)
    cpus: list[int] | None = None  # the CPUs close to it; None: CPU affinity fails (NOT_INIT)
    # amdsmi_get_link_metrics: per xGMI link (peer bdf, read KB, write KB); None: NOT_SUPPORTED
    link_metrics: list[tuple[str, int, int]] | None = None


@dataclass
class FakePair:
    """amdsmi's view of one ordered GPU pair."""

    type: int = AmdSmiLinkType.AMDSMI_LINK_TYPE_PCIE
    hops: int = 2
    weight: int = 40
    min_bandwidth: int = 0  # MB/s
    max_bandwidth: int = 0


_LIB_VERSION = {"major": 25, "minor": 5, "release": 1, "build": "fake"}
_state: dict = {"gpus": [], "pairs": {}, "init_error": None, "initialized": False, "faults": {},
                "lib_version": _LIB_VERSION}


def configure(gpus: list[FakeAmdGpu], pairs: dict[tuple[int, int], FakePair] | None = None,
              init_error: int | None = None,
              faults: dict[str | tuple[str, int], AmdSmiException] | None = None,
              lib_version: dict | None = None) -> None:
    """Describes the machine; pairs[(i, j)] (either order) gives the link, others are PCIe.
    init_error makes amdsmi_init fail with that status code. faults maps a function name, or
    (function name, GPU index), or ("*", GPU index), to the exception the call raises.
    lib_version replaces what amdsmi_get_lib_version returns."""
    _state.update(gpus=gpus, pairs=dict(pairs or {}), init_error=init_error, initialized=False,
                  faults=dict(faults or {}), lib_version=dict(lib_version or _LIB_VERSION))


def _fault(function: str, index: int | None = None) -> None:
    faults = _state["faults"]
    keys = [function] if index is None else [function, (function, index), ("*", index)]
    for key in keys:
        if key in faults:
            raise faults[key]


def _gpu(processor_handle, function: str) -> FakeAmdGpu:
    if not isinstance(processor_handle, amdsmi_processor_handle):
        raise AmdSmiParameterException(processor_handle, amdsmi_processor_handle)
    if not _state["initialized"]:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
    _fault(function, processor_handle.value - 1)
    gpu = _state["gpus"][processor_handle.value - 1]
    if function in gpu.unsupported:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
    return gpu


def _pair(src, dst, function: str) -> FakePair:
    _gpu(src, function)
    _gpu(dst, function)
    i, j = src.value - 1, dst.value - 1
    pairs = _state["pairs"]
    return pairs.get((i, j)) or pairs.get((j, i)) or FakePair()


# ---- the API ---------------------------------------------------------------------------------

def amdsmi_init(flag=AmdSmiInitFlags.INIT_AMD_GPUS):
    if not isinstance(flag, AmdSmiInitFlags):
        raise AmdSmiParameterException(flag, AmdSmiInitFlags)
    if _state["init_error"] is not None:
        raise AmdSmiLibraryException(_state["init_error"])
    _fault("amdsmi_init")
    _state["initialized"] = True


def amdsmi_shut_down():
    if not _state["initialized"]:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
    _state["initialized"] = False
    _fault("amdsmi_shut_down")


def amdsmi_get_lib_version():
    _fault("amdsmi_get_lib_version")
    return dict(_state["lib_version"])


def amdsmi_get_rocm_version():
    _fault("amdsmi_get_rocm_version")
    return (True, "7.0.2")


def amdsmi_get_processor_handles():
    if not _state["initialized"]:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
    _fault("amdsmi_get_processor_handles")
    # handle value i + 1: a null c_void_p reads back as None
    return [amdsmi_processor_handle(i + 1) for i in range(len(_state["gpus"]))]


def amdsmi_get_gpu_asic_info(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_asic_info")
    return {"market_name": gpu.market_name, "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]", "subvendor_id": "0x1002",
            "device_id": "0x740c", "rev_id": "0x01", "asic_serial": "0x0000000000000000",
            "oam_id": 0, "num_compute_units": 104, "target_graphics_version": "gfx90a",
            "subsystem_id": "0x0b0c"}


def amdsmi_get_power_cap_info(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_power_cap_info")
    return {"power_cap": gpu.power_cap_uw, "default_power_cap": gpu.power_cap_uw,
            "dpm_cap": 1700, "min_power_cap": 0, "max_power_cap": gpu.power_cap_uw}


def amdsmi_get_gpu_device_uuid(processor_handle):
    return _gpu(processor_handle, "amdsmi_get_gpu_device_uuid").uuid


def amdsmi_get_gpu_device_bdf(processor_handle):
    return _gpu(processor_handle, "amdsmi_get_gpu_device_bdf").bdf


def amdsmi_get_gpu_memory_total(processor_handle, mem_type):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_memory_total")
    if not isinstance(mem_type, AmdSmiMemoryType):
        raise AmdSmiParameterException(mem_type, AmdSmiMemoryType)
    return gpu.vram_total


def amdsmi_get_gpu_memory_usage(processor_handle, mem_type):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_memory_usage")
    if not isinstance(mem_type, AmdSmiMemoryType):
        raise AmdSmiParameterException(mem_type, AmdSmiMemoryType)
    return gpu.vram_used


def amdsmi_get_gpu_activity(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_activity")
    return {"gfx_activity": gpu.gfx_activity, "umc_activity": gpu.umc_activity,
            "mm_activity": gpu.mm_activity}


def amdsmi_get_power_info(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_power_info")
    return {"socket_power": gpu.average_socket_power,
            "current_socket_power": gpu.current_socket_power,
            "average_socket_power": gpu.average_socket_power, "gfx_voltage": "N/A",
            "soc_voltage": "N/A", "mem_voltage": "N/A", "power_limit": gpu.power_limit}


def amdsmi_get_temp_metric(processor_handle, sensor_type, metric):
    gpu = _gpu(processor_handle, "amdsmi_get_temp_metric")
    if not isinstance(sensor_type, AmdSmiTemperatureType):
        raise AmdSmiParameterException(sensor_type, AmdSmiTemperatureType)
    if not isinstance(metric, AmdSmiTemperatureMetric):
        raise AmdSmiParameterException(metric, AmdSmiTemperatureMetric)
    if sensor_type.name not in gpu.temps or metric != AmdSmiTemperatureMetric.CURRENT:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
    return gpu.temps[sensor_type.name]


def amdsmi_get_clock_info(processor_handle, clock_type):
    gpu = _gpu(processor_handle, "amdsmi_get_clock_info")
    if not isinstance(clock_type, AmdSmiClkType):
        raise AmdSmiParameterException(clock_type, AmdSmiClkType)
    clk, max_clk = {AmdSmiClkType.GFX: (gpu.gfx_clk, gpu.max_gfx_clk),
                    AmdSmiClkType.MEM: (gpu.mem_clk, gpu.max_mem_clk)}.get(clock_type, ("N/A",) * 2)
    return {"clk": clk, "min_clk": 500, "max_clk": max_clk, "clk_locked": False,
            "clk_deep_sleep": "N/A"}


def amdsmi_get_energy_count(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_energy_count")
    return {"energy_accumulator": gpu.energy_accumulator,
            "counter_resolution": gpu.counter_resolution, "timestamp": 0}


def amdsmi_get_gpu_metrics_info(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_metrics_info")
    return {"temperature_edge": gpu.temps.get("EDGE", "N/A"),
            "temperature_hotspot": gpu.temps.get("HOTSPOT", "N/A"),
            "average_gfx_activity": gpu.gfx_activity, "pcie_bandwidth_inst": "N/A",
            "xgmi_read_data_acc": list(gpu.xgmi_read_kb),
            "xgmi_write_data_acc": list(gpu.xgmi_write_kb)}


def amdsmi_get_gpu_process_list(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_gpu_process_list")
    return [{"name": "python3", "pid": pid, "mem": vram,
             "engine_usage": {"gfx": 0, "enc": 0},
             "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": vram},
             "cu_occupancy": "N/A"}
            for pid, vram in gpu.processes.items()]


def amdsmi_topo_get_link_type(processor_handle_src, processor_handle_dst):
    pair = _pair(processor_handle_src, processor_handle_dst, "amdsmi_topo_get_link_type")
    return {"hops": pair.hops, "type": int(pair.type)}


def amdsmi_topo_get_link_weight(processor_handle_src, processor_handle_dst):
    return _pair(processor_handle_src, processor_handle_dst, "amdsmi_topo_get_link_weight").weight


def amdsmi_get_minmax_bandwidth_between_processors(processor_handle_src, processor_handle_dst):
    pair = _pair(processor_handle_src, processor_handle_dst,
                 "amdsmi_get_minmax_bandwidth_between_processors")
    if pair.type != AmdSmiLinkType.AMDSMI_LINK_TYPE_XGMI:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
    return {"min_bandwidth": pair.min_bandwidth, "max_bandwidth": pair.max_bandwidth}


def amdsmi_topo_get_numa_node_number(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_topo_get_numa_node_number")
    return 0xFFFFFFFF if gpu.numa_node is None else gpu.numa_node


def amdsmi_get_cpu_affinity_with_scope(processor_handle, scope):
    gpu = _gpu(processor_handle, "amdsmi_get_cpu_affinity_with_scope")
    if not isinstance(scope, AmdSmiAffinityScope):
        raise AmdSmiParameterException(scope, AmdSmiAffinityScope)
    if gpu.cpus is None:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
    cpu_set = (ctypes.c_uint64 * (max(gpu.cpus, default=0) // 64 + 1))()
    for cpu in gpu.cpus:
        cpu_set[cpu // 64] |= 1 << (cpu % 64)
    return cpu_set


AMDSMI_MAX_NUM_XGMI_LINKS = 8


def amdsmi_get_link_metrics(processor_handle):
    gpu = _gpu(processor_handle, "amdsmi_get_link_metrics")
    if gpu.link_metrics is None:
        raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
    links = []
    for i in range(AMDSMI_MAX_NUM_XGMI_LINKS):
        bdf, read, write = (gpu.link_metrics[i] if i < len(gpu.link_metrics)
                            else ("0000:00:00.0", 0, 0))
        links.append({"bdf": bdf, "bit_rate": 25 if i < len(gpu.link_metrics) else 0,
                      "max_bandwidth": 50 if i < len(gpu.link_metrics) else 0,
                      "link_type": int(AmdSmiLinkType.AMDSMI_LINK_TYPE_XGMI), "read": read,
                      "write": write})
    return {"num_links": len(gpu.link_metrics), "links": links}
