"""The one list of optimizations: axes, options, presets, and whether each runs here.

CLI flags, TUI toggles and JSON records all use these names. Names and combination rules are
pure Python; `availability()` imports torch lazily because only the engine side asks it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

AXES: dict[str, tuple[str, ...]] = {
    "attention": ("eager", "sdpa", "flash", "mem_efficient", "cudnn", "flex", "flash_attention_2"),
    "kv": ("dynamic", "static", "paged"),
    "compile": ("off", "layers", "full"),
    "gemm": ("default", "tunableop"),
    "dtype": ("bf16", "fp16", "fp32"),
    "backend": ("hf", "vllm"),
}

DEFAULTS: dict[str, str] = {"attention": "sdpa", "kv": "dynamic", "compile": "off",
                            "gemm": "default", "dtype": "bf16", "backend": "hf"}

PRESETS: dict[str, dict[str, str]] = {
    # transformers as it comes: the study's starting point
    "baseline": {"attention": "eager", "kv": "dynamic", "compile": "off", "gemm": "default"},
    # the study's stack: FlashAttention-2 kernel, per-layer compile, TunableOp GEMMs
    "study": {"attention": "flash", "kv": "dynamic", "compile": "layers", "gemm": "tunableop"},
    # the fastest transformers path we know: static cache + CUDA graphs
    "max": {"attention": "sdpa", "kv": "static", "compile": "full", "gemm": "default"},
}

# attention option -> (transformers attn_implementation, SDPA backend name or None)
ATTENTION_IMPL: dict[str, tuple[str, str | None]] = {
    "eager": ("eager", None),
    "sdpa": ("sdpa", None),
    "flash": ("sdpa", "FLASH_ATTENTION"),
    "mem_efficient": ("sdpa", "EFFICIENT_ATTENTION"),
    "cudnn": ("sdpa", "CUDNN_ATTENTION"),
    "flex": ("flex_attention", None),
    "flash_attention_2": ("flash_attention_2", None),
}


class OptionError(ValueError):
    """An unknown, unavailable or incompatible option; the message is one line."""


def parse_opts(pairs: list[str], preset: str | None = None) -> dict[str, str]:
    """`["attention=sdpa", ...]` (after an optional preset) as a full axis -> option map."""
    opts = dict(DEFAULTS)
    if preset:
        if preset not in PRESETS:
            raise OptionError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        opts.update(PRESETS[preset])
    for pair in pairs:
        axis, sep, value = pair.partition("=")
        if not sep:
            raise OptionError(f"--opt takes AXIS=VALUE, got {pair!r}")
        if axis not in AXES:
            raise OptionError(f"unknown axis {axis!r}; axes: {', '.join(AXES)}")
        if value not in AXES[axis]:
            raise OptionError(f"unknown {axis} option {value!r}; options: {', '.join(AXES[axis])}")
        opts[axis] = value
    return opts


def conflicts(opts: dict[str, str]) -> str | None:
    """Why a combination cannot run, whatever the machine; None when it can."""
    if opts.get("compile") == "full" and opts.get("kv") != "static":
        return "compile=full captures CUDA graphs over fixed shapes: it requires kv=static"
    if opts.get("kv") == "paged" and opts.get("attention") == "flex":
        return ("kv=paged runs transformers' continuous batching, which supports eager, sdpa "
                "and flash attention, not flex")
    if opts.get("kv") == "paged" and opts.get("compile") != "off":
        return "kv=paged runs through continuous batching, which llmtop does not compile"
    if opts.get("backend") == "vllm" and opts.get("attention") not in ("sdpa", "flash"):
        return "backend=vllm brings its own attention kernels: leave attention at sdpa"
    if opts.get("backend") == "vllm" and opts.get("compile") != "off":
        return "backend=vllm compiles and captures its own CUDA graphs: leave compile=off"
    if opts.get("backend") == "vllm" and opts.get("kv") == "static":
        return "backend=vllm manages its own paged KV cache: leave kv at dynamic or paged"
    return None


@dataclass
class Availability:
    ok: bool
    reason: str = ""   # why not (or a caveat when ok)


def availability(device: str) -> dict[str, dict[str, Availability]]:
    """Whether each option can run on `device` here, with a one-line reason."""
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    rocm = cuda and torch.version.hip is not None
    no_gpu = "needs a CUDA or ROCm GPU" if not device.startswith("cuda") else "no GPU visible to torch"
    table: dict[str, dict[str, Availability]] = {axis: {} for axis in AXES}
    att = table["attention"]
    for name in ("eager", "sdpa", "flash", "flex"):
        att[name] = Availability(True)
    if not cuda:
        att["flash"] = Availability(True, "on CPU the SDPA 'flash' backend is a CPU kernel")
    for name in ("mem_efficient", "cudnn"):
        att[name] = Availability(cuda, "" if cuda else f"{no_gpu} (the CPU has no such SDPA kernel)")
    if rocm:
        att["cudnn"] = Availability(False, "cuDNN attention does not exist on ROCm")
    if importlib.util.find_spec("flash_attn") is None:
        att["flash_attention_2"] = Availability(False, "flash-attn not installed (pip install flash-attn)")
    else:
        att["flash_attention_2"] = Availability(cuda, "" if cuda else no_gpu)
    table["kv"]["dynamic"] = Availability(True)
    table["kv"]["static"] = Availability(True)
    from .paged import paged_available

    ok, why = paged_available()
    table["kv"]["paged"] = Availability(ok, why or "transformers' continuous batching, paged cache")
    table["compile"]["off"] = Availability(True)
    table["compile"]["layers"] = Availability(True, "" if cuda else "compiles on CPU too, slowly (minutes)")
    table["compile"]["full"] = Availability(True, "" if cuda else "no CUDA graphs on CPU: compile only, minutes per prompt length")
    table["gemm"]["default"] = Availability(True)
    if not cuda:
        table["gemm"]["tunableop"] = Availability(False, f"TunableOp {no_gpu}")
    elif rocm:
        table["gemm"]["tunableop"] = Availability(True, "tunes over rocBLAS and hipBLASLt solutions")
    else:
        table["gemm"]["tunableop"] = Availability(
            True, "on CUDA only cuBLAS's default solution exists: no gain (TPOT 0.44-0.8x on an H200)")
    table["dtype"]["bf16"] = Availability(True)
    table["dtype"]["fp16"] = Availability(True, "" if cuda else "fp16 matmuls are slow on most CPUs")
    table["dtype"]["fp32"] = Availability(True)
    table["backend"]["hf"] = Availability(True)
    from .vllm_backend import vllm_available

    ok, why = vllm_available(device)
    table["backend"]["vllm"] = Availability(ok, why or "vLLM's engine: paged attention, CUDA graphs")
    return table


def check(opts: dict[str, str], device: str) -> None:
    """Raises OptionError (one line) if `opts` cannot run on `device`."""
    why = conflicts(opts)
    if why:
        raise OptionError(why)
    table = availability(device)
    for axis, value in opts.items():
        a = table.get(axis, {}).get(value)
        if a is not None and not a.ok:
            raise OptionError(f"{axis}={value} is unavailable here: {a.reason}")


def as_dict(table: dict[str, dict[str, Availability]]) -> dict[str, Any]:
    return {axis: {name: {"ok": a.ok, "reason": a.reason} for name, a in opts.items()}
            for axis, opts in table.items()}
