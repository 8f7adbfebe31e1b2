"""The two ceilings of a device, measured on the model's own kernels: bandwidth and FLOP/s.

The roofline's floors (decode: bytes / bandwidth; prefill: FLOPs / peak) use what the device
really does here, not its datasheet. The FLOP/s ceiling is F.linear in the model's dtype at
the shapes of the model's own layer: a generic `a @ b` at 1024^3 in bf16 ran a path the
model never takes (0.8 GFLOP/s on a 2-core CPU where the model's F.linear ran ~11), and every
prefill then read 157-2941 % of its "floor". A floor is a lower bound, so a run that beats one
is a defect of the ceiling: `hold_floors` re-measures it, raises it to what the run proved
the device can do, and says so in an event and in the record; no figure above 100 % is shown.

Measurements are cached per device, dtype and layer shapes, with when and under what load
they were taken: an old entry, or one taken on a busy machine that is calmer now, is measured
again; LLMTOP_REMEASURE=1 forces a fresh measurement.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from llmtop.engine import metrics
from llmtop.engine.protocol import EngineEvent

from . import spec

KERNEL = "F.linear at the model's layer shapes"   # a cached entry of another kernel is stale
STALE_S = 7 * 24 * 3600   # a week: drivers, clocks and neighbours change
BUSY = metrics.BUSY_LOAD


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeat: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def device_name(device: str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    import platform

    return f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()}"


def machine_load() -> float:
    """The 1-minute load average per CPU this process may use (0 where the OS has none)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] / cpus
    except OSError:
        return 0.0


def linear_shapes(model: Any) -> list[tuple[int, int]]:
    """(out, in) of every nn.Linear of the model's first decoder layer: the GEMMs a prefill
    runs per token (the LM head runs once per request and is left out)."""
    head = model.get_output_embeddings()
    layers = getattr(getattr(model, "model", None), "layers", None)
    root = layers[0] if layers is not None and len(layers) else model
    return [tuple(m.weight.shape) for m in root.modules()
            if isinstance(m, torch.nn.Linear) and m is not head]


def flop_params(model: Any) -> tuple[int, int]:
    """(weights that multiply every prompt token, weights that multiply one position per
    request): the prefill keeps only the last position's logits, so the head counts once."""
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)
    return body, head.weight.numel() if head is not None else 0


def _linear_tflops(d: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int]]) -> float:
    per_token = sum(o * i for o, i in shapes)
    gpu = d.type == "cuda"
    # a prefill-sized row count: large enough to be compute-bound, small enough to take ~1 s
    # on a CPU (7B's layer at 256 rows would take ~10 s there)
    tokens = 4096 if gpu else max(16, min(256, int(2e9 / (2 * per_token))))
    weights = [torch.randn(o, i, device=d).to(dtype) for o, i in shapes]
    xs = {i: torch.randn(tokens, i, device=d).to(dtype) for _, i in shapes}
    seconds = _best_seconds(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], d,
                            10 if gpu else 3)
    return 2 * tokens * per_token / seconds / 1e12


def measure(device: str, dtype: torch.dtype, model: Any) -> dict[str, Any]:
    """Copy bandwidth (bytes read + written) and the model's F.linear TFLOP/s on `device`."""
    d = torch.device(device)
    gpu = d.type == "cuda"
    load = machine_load()
    nbytes = (1 << 30) if gpu else (128 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=d).uniform_()
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), d, 10 if gpu else 3)
    del src, dst
    return {"device_name": device_name(device), "dtype": str(dtype).replace("torch.", ""),
            "mem_bw_gb_s": 2 * nbytes / copy_s / 1e9,
            "peak_tflops": _linear_tflops(d, dtype, linear_shapes(model)),
            "kernel": KERNEL, "measured_at": time.time(), "load": max(load, machine_load())}


def stale(entry: dict[str, Any] | None, now: float | None = None,
          load: float | None = None) -> str | None:
    """Why a cached entry must be measured again, or None while it holds."""
    if entry is None:
        return "not measured yet"
    if entry.get("kernel") != KERNEL or "measured_at" not in entry:
        return "measured on another kernel by an older llmtop"
    age = (time.time() if now is None else now) - entry["measured_at"]
    if age > STALE_S:
        return f"measured {age / 86400:.0f} days ago"
    load = machine_load() if load is None else load
    was = entry.get("load", 0.0)
    if was > BUSY and load < was / 2:
        return f"measured on a busy machine (load {was:.2f} per CPU, now {load:.2f})"
    return None


def _key(device: str, dtype: torch.dtype, model: Any) -> str:
    shapes = ",".join(f"{o}x{i}" for o, i in sorted(set(linear_shapes(model))))
    return f"{device_name(device)}|{dtype}|{shapes}"


def _store(key: str, entry: dict[str, Any]) -> None:
    path = spec.cache_dir() / "ceilings.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    table[key] = {k: v for k, v in entry.items() if k != "remeasured"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1))


def get(device: str, dtype: torch.dtype, model: Any, remeasure: bool = False) -> dict[str, Any]:
    """This device's ceilings for this model and dtype: cached, measured where stale (~1 s).

    `remeasured` in the answer says why it was measured again now (absent when cached or new).
    """
    key = _key(device, dtype, model)
    try:
        entry = json.loads((spec.cache_dir() / "ceilings.json").read_text()).get(key)
    except (OSError, ValueError):
        entry = None
    why = ("asked for (LLMTOP_REMEASURE)" if remeasure or os.environ.get("LLMTOP_REMEASURE")
           else stale(entry))
    if why is None:
        return entry
    fresh = measure(device, dtype, model)
    _store(key, fresh)
    return fresh if entry is None else {**fresh, "remeasured": why}


def hold_floors(ceil: dict[str, Any], m: metrics.RunMetrics, weight_bytes: int,
                kv_bytes_per_token: int, model: Any, device: str, dtype: torch.dtype,
                ranks: int = 1) -> tuple[metrics.Roofline, dict[str, Any], list[EngineEvent]]:
    """The run's roofline on floors that hold, the ceilings it used, and any event.

    A floor the run beat means the ceiling under it was measured low (a busy machine, a
    cold cache): the ceiling is measured again, and if the run still beats it, raised to
    what the run achieved, which the device has just shown it can do. The percentages are
    then <= 100 by construction and the record's ceilings say they were re-measured.
    """
    params, head = flop_params(model)

    def roof(c: dict[str, Any]) -> metrics.Roofline:
        return metrics.roofline(m, weight_bytes, params, kv_bytes_per_token, c["mem_bw_gb_s"],
                                c["peak_tflops"], ranks, head)

    first = roof(ceil)
    if not first.beaten:
        return first, ceil, []
    over = {"decode": first.decode_floor_ms / m.tpot_ms if m.tpot_ms > 0 else math.inf,
            "prefill": first.prefill_floor_ms / m.ttft_ms}
    said = ", ".join(f"{name} ran at {100 * over[name]:.0f}% of its floor"
                     for name in first.beaten)
    fresh = get(device, dtype, model, remeasure=True)
    bw, peak = fresh["mem_bw_gb_s"], fresh["peak_tflops"]
    if "decode" in first.beaten:
        ctx = m.prompt_tokens + m.n_tokens / 2
        step_bytes = weight_bytes + kv_bytes_per_token * ctx * m.batch
        bw = max(bw, step_bytes / (m.tpot_ms / 1e3) / 1e9 / ranks)
    if "prefill" in first.beaten:
        flops = 2 * (params * m.prompt_tokens + head) * m.batch
        peak = max(peak, flops / (m.ttft_ms / 1e3) / 1e12 / ranks)
    raised = (bw, peak) != (fresh["mem_bw_gb_s"], fresh["peak_tflops"])
    note = (f"{said} on the cached ceilings; measured again"
            + (", then raised to what this run achieved" if raised else ""))
    held = {**fresh, "mem_bw_gb_s": bw, "peak_tflops": peak, "remeasured": note}
    if raised:
        _store(_key(device, dtype, model), {**held, "raised_by_run": True})
    event = EngineEvent("ceiling", f"ceilings re-measured: {note} ({bw:.1f} GB/s, "
                                   f"{peak:.4g} TFLOP/s)", time.perf_counter_ns())
    return roof(held), held, [event]
