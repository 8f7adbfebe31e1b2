"""The two ceilings of a device, measured once: memory bandwidth and matmul FLOP/s.

The roofline's floors (decode: bytes / bandwidth; prefill: FLOPs / peak) use what the card
really does here, not its datasheet. Measured in the model's dtype, cached per device name.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from . import spec


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


def measure(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Copy bandwidth (bytes read + written) and matmul TFLOP/s on `device` in `dtype`."""
    d = torch.device(device)
    gpu = d.type == "cuda"
    nbytes = (1 << 30) if gpu else (128 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=d).uniform_()
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), d, 10 if gpu else 3)
    n = 8192 if gpu else 1024
    a = torch.randn(n, n, device=d).to(dtype)
    b = torch.randn(n, n, device=d).to(dtype)
    mm_s = _best_seconds(lambda: a @ b, d, 10 if gpu else 3)
    del src, dst, a, b
    return {"device_name": device_name(device), "dtype": str(dtype).replace("torch.", ""),
            "mem_bw_gb_s": 2 * nbytes / copy_s / 1e9, "peak_tflops": 2 * n ** 3 / mm_s / 1e12}


def get(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Cached ceilings for this device and dtype (measured on first use, ~1 s)."""
    path = spec.cache_dir() / "ceilings.json"
    key = f"{device_name(device)}|{dtype}"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure(device, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))
    return table[key]
