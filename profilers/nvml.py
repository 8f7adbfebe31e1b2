"""NVIDIA GPUs through NVML (the nvidia-ml-py package, module `pynvml`).

Every per-field call goes through `_read`, so a field the device does not support becomes None
and one failing sensor never costs the whole poll. A poll is about 0.1 ms per GPU (0.076 ms
measured on an H100 with no active NVLink); a field read that includes 18 links' counters took
about 60 ms per H200, so those are read for one GPU per poll, in turn.
nvmlDeviceGetPcieThroughput is deliberately not used: it blocks ~20 ms to measure, so PCIe and
NVLink rates come from the driver's byte counters instead (field values).

Utilization (nvmlDeviceGetUtilizationRates) is the fraction of the driver's last sample period
(1/6 s to 1 s depending on the product) in which a kernel ran: sampling it at 10 Hz repeats or
smooths that window, it never resolves a single decode step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .gpu import BackendUnavailable, GpuSample, GpuStatic, error_line, mask_members
from .topology import Link, TopologyMatrix

ENERGY_READ_NS = 1_000_000_000
NODE_SET_WORDS = 16   # 64-bit words for 1024 NUMA nodes, Linux's largest MAX_NUMNODES
CPU_SET_WORDS = 128   # for 8192 CPUs, Linux's largest NR_CPUS: ids can exceed the CPU count
_LEVEL_LABELS = {0: "INT", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


def sysfs_bus_id(nvml_bus_id: bytes | str) -> str:
    """NVML's "00000000:17:00.0" (8-digit domain, upper case) as sysfs's "0000:17:00.0"."""
    text = nvml_bus_id.decode() if isinstance(nvml_bus_id, bytes) else nvml_bus_id
    domain, rest = text.split(":", 1)
    return f"{int(domain, 16):04x}:{rest.lower()}"


class NvmlBackend:
    """Polls every NVIDIA GPU the driver shows."""

    name = "NVML"

    def __init__(self) -> None:
        self._energy: dict[int, tuple[int, float]] = {}  # index -> (t_ns, mJ) of the last read
        try:
            import pynvml
        except ImportError:
            raise BackendUnavailable("NVML: nvidia-ml-py not installed") from None
        self._nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML: {exc} ({type(exc).__name__})") from None
        self.errors: dict[tuple[int, str], str] = {}
        self._failed: dict[int, str] = {}  # GPU index -> why it cannot be read at all
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            self.close()
            raise BackendUnavailable(f"NVML: cannot count the GPUs ({error_line(exc)})") from None
        except Exception:  # detect_backend makes it a reason line; the library is released
            self.close()
            raise
        if count == 0:
            self.close()
            raise BackendUnavailable("NVML: driver loaded but no NVIDIA GPU visible")
        self._handles = [self._handle(i) for i in range(count)]
        self._counters: dict[int, tuple[int, list[int | None]]] = {}       # PCIe bytes
        self._link_counters: dict[int, tuple[int, list[int | None]]] = {}  # NVLink bytes
        self._link_rates: dict[int, tuple[float | None, float | None]] = {}
        self._link_polls = -1
        self._nvlinks = [self._active_links(i, h) for i, h in enumerate(self._handles)]
        self._static = [self._read_static(i, h) for i, h in enumerate(self._handles)]

    def _handle(self, i: int) -> Any:
        """GPU i's handle, or None (the GPU then reads n/a with the error, the others run)."""
        try:
            return self._nv.nvmlDeviceGetHandleByIndex(i)
        except self._nv.NVMLError as exc:
            self._failed[i] = self.errors[i, "handle"] = error_line(exc)
            return None

    def _read(self, index: int, field: str, call: Callable[[], Any]) -> Any:
        """call(), or None when the device can't answer; unexpected errors are kept in
        self.errors for `llmtop info` instead of being raised from the sampler thread. A GPU
        that is lost is asked nothing more: each call to it would fail the same way."""
        if index in self._failed:
            return None
        try:
            return call()
        except self._nv.NVMLError as exc:
            self._note(index, field, exc)
            return None

    def _note(self, index: int, field: str, exc: Exception) -> None:
        nv = self._nv
        if isinstance(exc, (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound)):
            return
        self.errors[index, field] = error_line(exc)
        if isinstance(exc, nv.NVMLError_GpuIsLost) and index >= 0:
            self._failed[index] = error_line(exc)

    def _read_static(self, i: int, h: Any) -> GpuStatic:
        if h is None:
            return GpuStatic(index=i, name="n/a", vendor="nvidia", error=self._failed[i])
        nv = self._nv
        mem = self._read(i, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        pci = self._read(i, "pci", lambda: nv.nvmlDeviceGetPciInfo(h))
        cap_mw = self._read(i, "power_cap", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        node, cpus = self._numa(i, h)
        return GpuStatic(
            index=i,
            name=self._read(i, "name", lambda: nv.nvmlDeviceGetName(h)) or "n/a",
            vendor="nvidia",
            uuid=self._read(i, "uuid", lambda: nv.nvmlDeviceGetUUID(h)),
            pci_bus_id=sysfs_bus_id(pci.busId) if pci is not None else None,
            memory_total=mem.total if mem is not None else None,
            power_cap_w=cap_mw / 1000 if cap_mw is not None else None,
            sm_clock_max_mhz=self._read(
                i, "sm_clock_max", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
            mem_clock_max_mhz=self._read(
                i, "mem_clock_max", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
            numa_node=node,
            numa_source="NVML memory affinity" if node is not None else None,
            cpu_affinity=cpus,
            error=self._failed.get(i),
        )

    def _numa(self, i: int, h: Any) -> tuple[int | None, list[int] | None]:
        """The one node NVML's memory affinity names (None when it names none or several, as
        VMs do) and the CPUs its CPU affinity calls close, which numa.py maps to a node when
        the memory affinity gives none."""
        nv = self._nv
        nodes = self._read(i, "numa", lambda: nv.nvmlDeviceGetMemoryAffinity(
            h, NODE_SET_WORDS, nv.NVML_AFFINITY_SCOPE_NODE))
        cpus = self._read(i, "cpu_affinity", lambda: nv.nvmlDeviceGetCpuAffinity(h, CPU_SET_WORDS))
        members = mask_members(nodes) if nodes is not None else []
        return (members[0] if len(members) == 1 else None,
                (mask_members(cpus) or None) if cpus is not None else None)

    def _active_links(self, i: int, h: Any) -> list[tuple[int, str]] | None:
        """(link number, remote PCI bus id) for each active NVLink; [] for PCIe-only GPUs,
        which answer the first query with NotSupported. Links past the device's last one
        answer InvalidArgument. None when the links cannot be known (a GPU without a handle,
        or a query failing otherwise: the error is kept)."""
        if h is None or i in self._failed:
            return None
        nv = self._nv
        active = []
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            try:
                if nv.nvmlDeviceGetNvLinkState(h, link) != nv.NVML_FEATURE_ENABLED:
                    continue
                remote = nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link)
            except (nv.NVMLError_NotSupported, nv.NVMLError_InvalidArgument,
                    nv.NVMLError_FunctionNotFound):
                break
            except nv.NVMLError as exc:
                self._note(i, "nvlink", exc)
                return None
            active.append((link, sysfs_bus_id(remote.busId)))
        return active

    def devices(self) -> list[GpuStatic]:
        return list(self._static)

    def describe(self) -> dict[str, str]:
        nv = self._nv
        driver = self._read(-1, "driver", nv.nvmlSystemGetDriverVersion)
        nvml = self._read(-1, "nvml", nv.nvmlSystemGetNVMLVersion)
        return {"driver": str(driver) if driver else "n/a", "nvml": str(nvml) if nvml else "n/a"}

    def _field_values(self, i: int, h: Any, t_ns: int, read_links: bool) -> dict[str, Any]:
        """Memory temperature and the PCIe byte counters in one driver call, plus this GPU's
        per-link NVLink counters when it is `read_links`'s turn; counters become bytes/s
        against the previous reading of the same counters."""
        nv = self._nv
        ids: list[Any] = [nv.NVML_FI_DEV_MEMORY_TEMP, nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
                          nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES]
        if read_links:
            for link, _ in self._nvlinks[i] or []:
                ids += [(nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link),
                        (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, link)]
        values = self._read(i, "field_values", lambda: nv.nvmlDeviceGetFieldValues(h, ids))
        if values is None:
            return {}
        got = [_field_number(nv, v) for v in values]
        out: dict[str, Any] = {"temp_mem_c": got[0]}
        pcie = _rates(self._counters, i, t_ns, got[1:3])
        if pcie is not None:
            out.update(pcie_tx_bps=pcie[0], pcie_rx_bps=pcie[1])
        if read_links:
            kib = got[3:]
            links = _rates(self._link_counters, i, t_ns,
                           [_sum_or_none(kib[0::2], 1024), _sum_or_none(kib[1::2], 1024)])
            if links is not None:
                self._link_rates[i] = links
        if i in self._link_rates:
            out.update(link_tx_bps=self._link_rates[i][0], link_rx_bps=self._link_rates[i][1])
        return out

    def _link_turn(self) -> int | None:
        """The GPU whose NVLink counters this poll reads, in turn. On 4 x H200 (18 links each)
        reading them cost ~60 ms per GPU (benchmarks/nvml_stress.py: a full poll of the four
        took ~270 ms, so a 10 Hz sampler ran at 3.6 Hz); one GPU per poll bounds that cost,
        and each GPU's link rate still refreshes every few polls."""
        linked = [i for i, links in enumerate(self._nvlinks) if links]
        if not linked:
            return None
        self._link_polls += 1
        return linked[self._link_polls % len(linked)]

    def _process_mem(self, i: int, h: Any, pid: int) -> int | None:
        """Bytes `pid` holds here. NVML reports host pids, so inside a container whose pid
        namespace differs from the driver's this finds nothing and stays None."""
        procs = self._read(i, "processes", lambda: self._nv.nvmlDeviceGetComputeRunningProcesses(h))
        for proc in procs or []:
            if proc.pid == pid:
                return proc.usedGpuMemory
        return None

    def _energy_mj(self, i: int, h: object, t_ns: int, power_mw: float | None) -> float | None:
        """The energy counter, read at most once a second: on an H100 (driver 580) the call
        costs 3.4 ms against ~0.002 ms for the others. In between, the last reading plus
        power x time since it, so a 10 Hz poll stays ~0.1 ms."""
        last = self._energy.get(i)
        if last is None or t_ns - last[0] >= ENERGY_READ_NS or power_mw is None:
            mj = self._read(i, "energy", lambda: self._nv.nvmlDeviceGetTotalEnergyConsumption(h))
            if mj is not None:
                self._energy[i] = (t_ns, mj)
            return mj
        return last[1] + power_mw * (t_ns - last[0]) / 1e9

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        nv = self._nv
        out = []
        link_turn = self._link_turn()
        for i, h in enumerate(self._handles):
            t_ns = time.perf_counter_ns()
            if i in self._failed:
                out.append(GpuSample(t_ns=t_ns, index=i, error=self._failed[i]))
                continue
            util = self._read(i, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
            mem = self._read(i, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
            power_mw = self._read(i, "power", lambda: nv.nvmlDeviceGetPowerUsage(h))
            cap_mw = self._read(i, "power_cap", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
            energy_mj = self._energy_mj(i, h, t_ns, power_mw)
            sample = GpuSample(
                t_ns=t_ns,
                index=i,
                util_pct=util.gpu if util is not None else None,
                mem_util_pct=util.memory if util is not None else None,
                mem_used=mem.used if mem is not None else None,
                mem_total=mem.total if mem is not None else None,
                power_w=power_mw / 1000 if power_mw is not None else None,
                power_cap_w=cap_mw / 1000 if cap_mw is not None else None,
                temp_c=self._read(
                    i, "temp", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                sm_clock_mhz=self._read(
                    i, "sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                mem_clock_mhz=self._read(
                    i, "mem_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                energy_j=energy_mj / 1000 if energy_mj is not None else None,
                process_mem=self._process_mem(i, h, pid) if pid is not None else None,
                **self._field_values(i, h, t_ns, read_links=i == link_turn),
            )
            sample.error = self._failed.get(i)  # lost during this poll
            out.append(sample)
        return out

    def topology(self) -> TopologyMatrix:
        """Common PCIe ancestor for every pair, NVLink where links are active.

        A link whose far end is not one of our GPUs goes to an NVSwitch: two GPUs that both
        reach switches talk at the smaller of their switch link counts (what nvidia-smi topo
        prints as NV18 on an HGX H100). A pair NVML cannot describe (a failed GPU, NVLink
        state or common ancestor unreadable) is kind "unknown" with the error, never a guess.
        """
        n = len(self._handles)
        by_bus = {s.pci_bus_id: s.index for s in self._static if s.pci_bus_id}
        direct = [[0] * n for _ in range(n)]
        to_switch = [0] * n
        for i, links in enumerate(self._nvlinks):
            for _, remote in links or []:
                if remote in by_bus:
                    direct[i][by_bus[remote]] += 1
                else:
                    to_switch[i] += 1
        speeds = [self._nvlink_speed_gbps(i, h) for i, h in enumerate(self._handles)]
        rows = []
        for i in range(n):
            row = []
            for j in range(n):
                row.append(Link(kind="self", label="X", weight=0) if i == j
                           else self._pair(i, j, direct, to_switch, speeds))
            rows.append(row)
        return TopologyMatrix(source=self.name, indices=list(range(n)), links=rows)

    def _pair(self, i: int, j: int, direct: list[list[int]], to_switch: list[int],
              speeds: list[float | None]) -> Link:
        """How GPU i reaches GPU j, from the NVLink census and the PCIe common ancestor."""
        failed = self._failed.get(i) or self._failed.get(j)
        if failed:
            return Link(kind="unknown", label="n/a", error=f"GPU{i if i in self._failed else j}: "
                                                           f"{failed}")
        count = direct[i][j] or direct[j][i]
        unknown = [g for g in (i, j) if self._nvlinks[g] is None]
        if not count and unknown:
            g = unknown[0]
            return Link(kind="unknown", label="n/a",
                        error=f"GPU{g} NVLink state: {self.errors.get((g, 'nvlink'), 'unknown')}")
        count = count or min(to_switch[i], to_switch[j])
        nv = self._nv
        level = self._read(i, "topology", lambda: nv.nvmlDeviceGetTopologyCommonAncestor(
            self._handles[i], self._handles[j]))
        if count:
            speed = speeds[i] or speeds[j]
            return Link(kind="nvlink", label=f"NV{count}", links=count, weight=level,
                        bandwidth_gbps=count * speed if speed else None)
        if level not in _LEVEL_LABELS:
            why = self.errors.get((i, "topology"), "not reported by the driver")
            return Link(kind="unknown", label="n/a", error=f"PCIe common ancestor: {why}")
        return Link(kind="pcie", label=_LEVEL_LABELS[level], weight=level)

    def _nvlink_speed_gbps(self, i: int, h: Any) -> float | None:
        """One active link's one-way speed as the driver reports it (MB/s -> GB/s)."""
        if not self._nvlinks[i]:
            return None
        nv = self._nv
        values = self._read(i, "nvlink_speed", lambda: nv.nvmlDeviceGetFieldValues(
            h, [nv.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON]))
        mbps = _field_number(nv, values[0]) if values is not None else None
        return mbps / 1000 if mbps else None

    def close(self) -> None:
        """Never raises: a driver that fails to shut down has nothing left to tell the user."""
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError as exc:
            self.errors[-1, "shutdown"] = error_line(exc)


def _field_number(nv: Any, value: Any) -> float | int | None:
    """A c_nvmlFieldValue_t as a number, None where its own status is not success."""
    if value.nvmlReturn != nv.NVML_SUCCESS:
        return None
    member = {nv.NVML_VALUE_TYPE_DOUBLE: "dVal", nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
              nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
              nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
              nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
              nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
              nv.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal"}.get(value.valueType)
    return getattr(value.value, member) if member else None


def _rates(store: dict[int, tuple[int, list[int | None]]], i: int, t_ns: int,
           counters: list[int | None]) -> list[float | None] | None:
    """Bytes/s of each counter since GPU i's previous reading in `store` (None before one;
    a counter that went missing or backwards gives None), storing this reading."""
    previous = store.get(i)
    store[i] = (t_ns, counters)
    if previous is None or t_ns <= previous[0]:
        return None
    dt = (t_ns - previous[0]) / 1e9
    return [None if now is None or then is None or now < then else (now - then) / dt
            for now, then in zip(counters, previous[1])]


def _sum_or_none(values: list, scale: int) -> int | None:
    """Total of per-link counters, None when there are no links or any is missing."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) * scale
