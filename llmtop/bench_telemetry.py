"""GPU power and per-GPU readings during a sweep's runs (profilers' Sampler in its own process)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

from llmtop.bench_points import mean

class Telemetry:
    """GPU power during each run, from a Sampler in its own process (profilers.sampler_process:
    a crash in the vendor library ends the readings, not the sweep)."""

    def __init__(self, enabled: bool = True, hz: float = 10.0,
                 warn: Callable[[str], None] | None = None) -> None:
        self.sampler = None
        self.reason = ""
        self.devices: list[dict[str, Any]] = []
        self._described: dict[str, Any] = {}
        self._warn = warn or (lambda message: None)
        if not enabled:
            self.reason = "turned off (--no-telemetry)"
            return
        try:
            from llmtop.profilers.gpu import BackendUnavailable
            from llmtop.profilers.sampler_process import SamplerDied, SamplerProcess
        except Exception as e:  # the profilers package is optional here
            self.reason = f"llmtop.profilers is not available ({type(e).__name__}: {e})"
            return
        try:
            self.sampler = SamplerProcess(hz)
        except (BackendUnavailable, SamplerDied) as e:
            self.reason = str(e)
            return
        self.devices = [asdict(d) for d in self.sampler.devices]
        self._described = {"backend": self.sampler.backend_name, "devices": self.devices,
                            "versions": self.sampler.versions}
        if self.sampler.topology is not None:
            self._described["topology"] = self.sampler.topology
        elif self.sampler.topology_error:
            self._described["topology_error"] = self.sampler.topology_error

    def describe(self) -> dict[str, Any]:
        if not self._described:
            return {"available": False, "reason": self.reason}
        return {"available": True, **self._described}

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None

    def summary(self, t0_ns: int, t1_ns: int, gpus: list[int] | None, tokens: int) -> dict[str, Any]:
        if self.sampler is None:
            return {"available": False, "reason": self.reason} if self.reason else {"available": False}
        from llmtop.profilers.sampler_process import SamplerDied

        try:
            return power_summary(self.sampler, t0_ns, t1_ns, gpus, tokens)
        except SamplerDied as e:
            self.stop()
            self.reason = f"{e}; no GPU power from this run on"
            self._warn(f"llmtop bench: {self.reason} (the sweep goes on)")
            return {"available": False, "reason": self.reason}


def power_summary(sampler: Any, t0_ns: int, t1_ns: int, gpus: list[int] | None,
                  tokens: int) -> dict[str, Any]:
    """Mean power of the GPUs in use over [t0, t1], the energy per generated token, and each
    GPU's own readings (mean power and utilization, peak memory): with tensor parallelism the
    ranks' GPUs do not work alike, and the study asks for each one.

    Energy = sum over GPUs of mean power x duration: the samples come every 100 ms and a run
    lasts longer, which is the resolution NVML's power reading honestly has.
    """
    duration_s = max(0, t1_ns - t0_ns) / 1e9
    per_gpu: dict[int, list[Any]] = {}
    for s in sampler.samples_between(t0_ns, t1_ns):
        if gpus is None or s.index in gpus:
            per_gpu.setdefault(s.index, []).append(s)
    power = {i: [float(s.power_w) for s in v if s.power_w is not None] for i, v in per_gpu.items()}
    power = {i: v for i, v in power.items() if v}
    if not power:
        return {"available": False, "reason": "no power samples during the run"}
    means = {i: sum(v) / len(v) for i, v in power.items()}
    total = sum(means.values())
    energy = total * duration_s
    return {"available": True, "mean_power_w": total, "energy_j": energy,
            "energy_j_per_token": energy / tokens if tokens else None,
            "samples": sum(len(v) for v in power.values()), "gpus": sorted(means),
            "duration_s": duration_s,
            "per_gpu": {str(i): _gpu_readings(per_gpu[i]) for i in sorted(per_gpu)}}


def _gpu_readings(samples: list[Any]) -> dict[str, float | None]:
    """One GPU over a run: mean power and utilization, the most memory it held."""
    mem = [s.mem_used for s in samples if s.mem_used is not None]
    return {"power_w": mean([s.power_w for s in samples]),
            "util_pct": mean([s.util_pct for s in samples]),
            "mem_used_gib": max(mem) / 2**30 if mem else None}



def telemetry_gpus(record: dict[str, Any], device: str, tp: int) -> list[int] | None:
    """The GPUs whose power a run is charged with: the engine's own ranks as the telemetry
    numbers them (the run record's model.gpus, the set the engine chose or was given), else
    the ordinals from the device (right only where CUDA_VISIBLE_DEVICES is unset)."""
    gpus = (record.get("model") or {}).get("gpus")
    return list(gpus) if gpus else gpu_indices(device, tp)


def gpu_indices(device: str, tp: int) -> list[int] | None:
    if not device.startswith("cuda"):
        return None
    _, _, idx = device.partition(":")
    first = int(idx) if idx.isdigit() else 0
    return list(range(first, first + tp))
