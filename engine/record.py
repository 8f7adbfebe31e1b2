"""The run record: what `--json`, bench and sessions store, and other tools read.

Schema `llmtop.run/1`: model, config, machine, versions, tokens (per request: index, id,
text, t_ns), metrics, guard. Add fields freely; never rename or drop one without bumping the
schema number.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from typing import Any

from llmtop import __version__

SCHEMA = "llmtop.run/1"


def versions(probe_torch: bool = True) -> dict[str, str]:
    """Installed versions; `probe_torch=False` (a torch-free client) skips torch's CUDA/HIP."""
    out = {"python": platform.python_version(), "llmtop": __version__}
    for dist in ("torch", "transformers", "accelerate", "triton", "vllm", "flash-attn"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if not probe_torch:
        return out
    try:
        import torch

        out["cuda"] = torch.version.cuda or ""
        out["hip"] = torch.version.hip or ""
    except ImportError:
        pass
    return out


def machine(probe_torch: bool = True) -> dict[str, Any]:
    """This host; `probe_torch=False` (a torch-free client) leaves out what only torch sees."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    if not probe_torch:
        return info
    try:
        import torch

        info["engine_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["gpus"].append({"index": i, "name": p.name, "memory_bytes": p.total_memory,
                                     "sm_count": p.multi_processor_count})
            info["driver"] = _nvidia_driver()
    except ImportError:
        pass
    return info


def _nvidia_driver() -> str:
    try:
        with open("/proc/driver/nvidia/version") as f:
            return f.readline().strip()
    except OSError:
        return ""


def build(model: dict[str, Any], config: dict[str, Any], request: dict[str, Any],
          tokens: list[list[dict[str, Any]]], metrics: dict[str, Any], guard: dict[str, Any],
          stopped: str = "", probe_torch: bool = True) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": model,
        "config": config,
        "request": request,
        "machine": machine(probe_torch),
        "versions": versions(probe_torch),
        "tokens": tokens,
        "metrics": metrics,
        "guard": guard,
        "stopped": stopped,   # "" when complete; else why it ended early (stop, oom, error)
    }
