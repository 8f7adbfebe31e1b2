"""AMD GPUs through ROCm's `amdsmi` Python package (built against its 7.0 interface).

Two traps shape this file. `import amdsmi` without ROCm's libamd_smi.so prints two lines to
stdout and raises KeyError (not ImportError), so the import runs with stdout captured, which
also keeps those lines out of a running TUI. And amdsmi reports a value the device lacks either
by raising AmdSmiLibraryException or by returning the string "N/A" inside a result dict; both
become None here.

Units as the library gives them: power W (power_info) but power cap uW (power_cap_info),
clocks MHz, temperatures C, memory bytes, energy = accumulator x resolution in uJ, link
bandwidth MB/s. gfx_activity is the SMU's running average, like NVML's utilization.

On an MI250 each package's power is reported by its first die; the second die answers N/A
(rocm-smi shows it as "N/A" / "0.0W"), so its power and cap stay None.

PCIe rates are left None: amdsmi_get_gpu_pci_throughput blocks about a second per call, far too
slow for a 10 Hz poll. xGMI rates come from amdsmi_get_link_metrics's per-link read/write
counters (KB), which MI250X serves while its gpu_metrics accumulators read "N/A"; where link
metrics are not supported, from the accumulators in amdsmi_get_gpu_metrics_info.

Every amdsmi exception family (AmdSmiLibraryException and its Retry/Timeout subclasses,
AmdSmiParameterException, AmdSmiKeyException) derives from AmdSmiException: a failed call is a
None figure plus a one-line entry in `errors`, a failed topology query an "unknown" link or a
None figure with the error on the link, and close() never raises.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import Any

from .gpu import BackendUnavailable, GpuSample, GpuStatic, error_line, mask_members
from .topology import Link, TopologyMatrix

# amdsmi_wrapper.AMDSMI_STATUS_NOT_SUPPORTED / _NOT_YET_IMPLEMENTED: "this device can't", not
# an error worth reporting.
_NOT_SUPPORTED = {2, 3}
_NO_NODE = 2**31  # amdsmi returns the KFD's numa_node as uint32: -1 (none) reads 4294967295


def import_amdsmi() -> Any:
    """Imports amdsmi with its stdout noise captured; BackendUnavailable says why it failed."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):
            import amdsmi
    except ModuleNotFoundError:
        raise BackendUnavailable("amdsmi: not installed") from None
    except Exception as exc:  # KeyError('libamd_smi.so') without ROCm, OSError for a bad lib
        printed = noise.getvalue().strip().splitlines()
        detail = printed[0] if printed else f"{type(exc).__name__}: {exc}"
        raise BackendUnavailable(f"amdsmi: ROCm library not loadable ({detail})") from None
    return amdsmi


def _number(value: Any) -> Any:
    """amdsmi's "N/A" (and any other non-number) as None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class AmdSmiBackend:
    """Polls every AMD GPU (each MI250 die, each MI300 partition) amdsmi shows."""

    name = "amdsmi"

    def __init__(self) -> None:
        smi = import_amdsmi()
        self._smi = smi
        try:
            smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
            handles = smi.amdsmi_get_processor_handles()
        except smi.AmdSmiException as exc:
            raise BackendUnavailable(f"amdsmi: init failed ({_one_line(exc)})") from None
        if not handles:
            smi.amdsmi_shut_down()
            raise BackendUnavailable("amdsmi: library loaded but no AMD GPU visible")
        self._handles = handles
        self.errors: dict[tuple[int, str], str] = {}
        self._xgmi: dict[int, tuple[int, list[int | None]]] = {}
        self._static = [self._read_static(i, h) for i, h in enumerate(handles)]

    def _read(self, index: int, field: str, call: Callable[[], Any]) -> Any:
        """call(), or None when the device can't answer; other failures are kept in
        self.errors for `llmtop info` instead of being raised from the sampler thread."""
        value, error = self._try(call)
        if error:
            self.errors[index, field] = error
        else:  # the entry says what is failing now: a call that recovered drops it
            self.errors.pop((index, field), None)
        return value

    def _failing(self, index: int, fields: tuple[str, ...]) -> str | None:
        """The first field's error when every one of `fields` is failing on this GPU: then
        the GPU itself reads n/a with that one line, not just some of its figures."""
        found = [self.errors.get((index, f)) for f in fields]
        return found[0] if all(found) else None

    def _try(self, call: Callable[[], Any]) -> tuple[Any, str | None]:
        """(call(), None), or (None, the error in one line); (None, None) where the device
        simply lacks the feature."""
        try:
            return call(), None
        except self._smi.AmdSmiException as exc:
            if getattr(exc, "err_code", None) in _NOT_SUPPORTED:
                return None, None
            return None, error_line(exc)

    def _read_static(self, i: int, h: Any) -> GpuStatic:
        smi = self._smi
        asic = self._read(i, "asic", lambda: smi.amdsmi_get_gpu_asic_info(h)) or {}
        cap = self._read(i, "power_cap", lambda: smi.amdsmi_get_power_cap_info(h)) or {}
        gfx = self._read(i, "gfx_clock", lambda: smi.amdsmi_get_clock_info(
            h, smi.AmdSmiClkType.GFX)) or {}
        mem = self._read(i, "mem_clock", lambda: smi.amdsmi_get_clock_info(
            h, smi.AmdSmiClkType.MEM)) or {}
        cap_uw = _number(cap.get("power_cap"))
        bdf = self._read(i, "bdf", lambda: smi.amdsmi_get_gpu_device_bdf(h))
        node = _number(self._read(i, "numa", lambda: smi.amdsmi_topo_get_numa_node_number(h)))
        return GpuStatic(
            index=i,
            name=asic.get("market_name") or ("AMD GPU" if asic else "n/a"),
            vendor="amd",
            uuid=self._read(i, "uuid", lambda: smi.amdsmi_get_gpu_device_uuid(h)),
            pci_bus_id=bdf,
            memory_total=self._read(i, "memory_total", lambda: smi.amdsmi_get_gpu_memory_total(
                h, smi.AmdSmiMemoryType.VRAM)),
            power_cap_w=cap_uw / 1e6 if cap_uw else None,
            sm_clock_max_mhz=_number(gfx.get("max_clk")),
            mem_clock_max_mhz=_number(mem.get("max_clk")),
            numa_node=node if node is not None and node < _NO_NODE else None,
            numa_source="amdsmi" if node is not None and node < _NO_NODE else None,
            cpu_affinity=self._cpu_affinity(i, h),
            error=self._failing(i, ("asic", "bdf", "uuid")),
        )

    def _cpu_affinity(self, i: int, h: Any) -> list[int] | None:
        """The CPUs of the GPU's NUMA scope, where this amdsmi has the call (7.0 does) and the
        host lets it answer (it needs the CPU socket count, so AMD CPUs initialised)."""
        smi = self._smi
        if not hasattr(smi, "amdsmi_get_cpu_affinity_with_scope"):
            return None
        cpu_set, _ = self._try(lambda: smi.amdsmi_get_cpu_affinity_with_scope(
            h, smi.AmdSmiAffinityScope.NUMA_SCOPE))
        return (mask_members(cpu_set) or None) if cpu_set is not None else None

    def devices(self) -> list[GpuStatic]:
        return list(self._static)

    def describe(self) -> dict[str, str]:
        smi = self._smi
        version = self._read(-1, "lib_version", smi.amdsmi_get_lib_version) or {}
        parts = [version.get(k) for k in ("major", "minor", "release")]
        rocm = self._read(-1, "rocm_version", smi.amdsmi_get_rocm_version)
        return {"amdsmi": ".".join(map(str, parts)) if all(
                    _number(p) is not None for p in parts) else "n/a",
                "rocm": str(rocm[1]) if rocm and rocm[0] else "n/a"}

    def _temp(self, i: int, h: Any, sensor: str) -> float | None:
        smi = self._smi
        return _number(self._read(i, f"temp_{sensor.lower()}", lambda: smi.amdsmi_get_temp_metric(
            h, smi.AmdSmiTemperatureType[sensor], smi.AmdSmiTemperatureMetric.CURRENT)))

    def _xgmi_rates(self, i: int, h: Any, t_ns: int) -> tuple[float | None, float | None]:
        """Bytes/s written (tx) and read (rx) over xGMI since this device's previous poll."""
        totals = self._xgmi_totals(i, h)
        if totals is None:
            return None, None
        previous = self._xgmi.get(i)
        self._xgmi[i] = (t_ns, totals)
        if previous is None or t_ns <= previous[0]:
            return None, None
        dt = (t_ns - previous[0]) / 1e9
        tx, rx = (None if now is None or then is None or now < then else (now - then) / dt
                  for now, then in zip(totals, previous[1]))
        return tx, rx

    def _xgmi_totals(self, i: int, h: Any) -> list[int | None] | None:
        """[bytes written, bytes read] over all xGMI links since the driver loaded: from the
        per-link counters of amdsmi_get_link_metrics, else the gpu_metrics accumulators."""
        smi = self._smi
        links = self._read(i, "link_metrics", lambda: smi.amdsmi_get_link_metrics(h))
        if links is not None:
            used = links.get("links", [])[:_number(links.get("num_links")) or 0]
            return [_kb_total([link.get("write") for link in used]),
                    _kb_total([link.get("read") for link in used])]
        metrics = self._read(i, "gpu_metrics", lambda: smi.amdsmi_get_gpu_metrics_info(h))
        if metrics is None:
            return None
        return [_kb_total(metrics.get("xgmi_write_data_acc")),
                _kb_total(metrics.get("xgmi_read_data_acc"))]

    def _process_mem(self, i: int, h: Any, pid: int) -> int | None:
        procs = self._read(i, "processes", lambda: self._smi.amdsmi_get_gpu_process_list(h))
        for proc in procs or []:
            if proc.get("pid") == pid:
                return _number(proc.get("memory_usage", {}).get("vram_mem"))
        return None

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        smi = self._smi
        vram = smi.AmdSmiMemoryType.VRAM
        out = []
        for i, h in enumerate(self._handles):
            t_ns = time.perf_counter_ns()
            activity = self._read(i, "activity", lambda: smi.amdsmi_get_gpu_activity(h)) or {}
            power = self._read(i, "power", lambda: smi.amdsmi_get_power_info(h)) or {}
            gfx = self._read(i, "gfx_clock", lambda: smi.amdsmi_get_clock_info(
                h, smi.AmdSmiClkType.GFX)) or {}
            mem = self._read(i, "mem_clock", lambda: smi.amdsmi_get_clock_info(
                h, smi.AmdSmiClkType.MEM)) or {}
            energy = self._read(i, "energy", lambda: smi.amdsmi_get_energy_count(h)) or {}
            # MI300 and later report current_socket_power; MI200 and earlier average_socket_power.
            power_w = _number(power.get("current_socket_power")) or _number(
                power.get("average_socket_power"))
            accumulator = _number(energy.get("energy_accumulator"))
            resolution = _number(energy.get("counter_resolution"))
            link_tx, link_rx = self._xgmi_rates(i, h, t_ns)
            out.append(GpuSample(
                t_ns=t_ns,
                index=i,
                util_pct=_number(activity.get("gfx_activity")),
                mem_util_pct=_number(activity.get("umc_activity")),
                mem_used=self._read(i, "memory", lambda: smi.amdsmi_get_gpu_memory_usage(h, vram)),
                mem_total=self._static[i].memory_total,
                power_w=power_w,
                power_cap_w=_number(power.get("power_limit")) or None,
                temp_c=self._temp(i, h, "EDGE"),
                temp_hotspot_c=self._temp(i, h, "HOTSPOT"),
                temp_mem_c=self._temp(i, h, "VRAM"),
                sm_clock_mhz=_number(gfx.get("clk")),
                mem_clock_mhz=_number(mem.get("clk")),
                energy_j=(accumulator * resolution / 1e6
                          if accumulator is not None and resolution is not None else None),
                link_tx_bps=link_tx,
                link_rx_bps=link_rx,
                process_mem=self._process_mem(i, h, pid) if pid is not None else None,
                error=self._failing(i, ("activity", "power", "memory")),
            ))
        return out

    def topology(self) -> TopologyMatrix:
        """Link type, hops, weight and min/max bandwidth for every pair.

        amdsmi gives bandwidth only for direct xGMI neighbours (0-0 means "not directly
        connected", per rocm-smi --shownodesbw); those pairs keep bandwidth None. A query that
        fails leaves its figure None with the error on the link (listed by `llmtop info`); a
        failed link type makes the pair "unknown", not PCIe.
        """
        n = len(self._handles)
        rows = []
        for i in range(n):
            rows.append([Link(kind="self", label="X", weight=0) if i == j else self._pair(i, j)
                         for j in range(n)])
        return TopologyMatrix(source=self.name, indices=list(range(n)), links=rows)

    def _pair(self, i: int, j: int) -> Link:
        smi = self._smi
        a, b = self._handles[i], self._handles[j]
        kind, kind_error = self._try(lambda: smi.amdsmi_topo_get_link_type(a, b))
        weight, weight_error = self._try(lambda: smi.amdsmi_topo_get_link_weight(a, b))
        errors = [f"link type: {kind_error}"] if kind_error else []
        errors += [f"link weight: {weight_error}"] if weight_error else []
        if kind is None:
            return Link(kind="unknown", label="n/a", weight=_number(weight),
                        error="; ".join(errors or ["link type: not reported"]))
        is_xgmi = kind.get("type") == smi.AmdSmiLinkType.AMDSMI_LINK_TYPE_XGMI
        bandwidth = None
        if is_xgmi:
            minmax, bw_error = self._try(
                lambda: smi.amdsmi_get_minmax_bandwidth_between_processors(a, b))
            errors += [f"bandwidth: {bw_error}"] if bw_error else []
            max_mbps = _number((minmax or {}).get("max_bandwidth"))
            bandwidth = max_mbps / 1000 if max_mbps else None
        return Link(kind="xgmi" if is_xgmi else "pcie", label="XGMI" if is_xgmi else "PCIE",
                    bandwidth_gbps=bandwidth, hops=_number(kind.get("hops")),
                    weight=_number(weight), error="; ".join(errors) or None)

    def close(self) -> None:
        """Never raises: a library that fails to shut down has nothing left to tell the user."""
        try:
            self._smi.amdsmi_shut_down()
        except self._smi.AmdSmiException as exc:
            self.errors[-1, "shutdown"] = error_line(exc)


def _kb_total(per_link: Any) -> int | None:
    """Sum of per-link KB counters as bytes; None when the device reports none of them."""
    if not isinstance(per_link, list):
        return None
    numbers = [v for v in per_link if _number(v) is not None]
    return sum(numbers) * 1024 if numbers else None


def _one_line(exc: BaseException) -> str:
    """amdsmi's exception text spans lines ("Error code:\\n\\t2 | ..."); keep it on one."""
    return " ".join(str(exc).split())
