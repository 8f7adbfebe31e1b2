"""attention: which attention kernel runs (transformers attn_implementation, SDPA backend)."""

from __future__ import annotations

import importlib.util

from . import Availability, Axis, Here

AXIS = Axis(
    name="attention", order=0,
    help="attention kernel (transformers attn_implementation / SDPA backend)",
    options={
        "eager": "transformers' plain PyTorch attention (matmul, softmax, matmul)",
        "sdpa": "PyTorch's scaled_dot_product_attention choosing among flash, "
                "memory-efficient and math, never cuDNN",
        "flash": "SDPA pinned to its FlashAttention-2 kernel",
        "mem_efficient": "SDPA pinned to its memory-efficient (xformers') kernel",
        "cudnn": "SDPA pinned to cuDNN attention (builds a plan per KV length)",
        "flex": "torch's flex_attention (compiled score mods)",
        "flash_attention_2": "the flash-attn package's kernels",
    },
    default="sdpa",
    why_default=("sdpa without cuDNN: left free, PyTorch picks cuDNN attention at decode, which "
                 "builds a plan per KV length (TPOT 74 ms against eager's 22-27 ms on an H200)"),
    presets={"baseline": "eager", "study": "flash", "max": "sdpa"},
)

# option -> (transformers attn_implementation, the SDPA backends it allows, None: no pin)
IMPL: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "eager": ("eager", None),
    "sdpa": ("sdpa", ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")),
    "flash": ("sdpa", ("FLASH_ATTENTION",)),
    "mem_efficient": ("sdpa", ("EFFICIENT_ATTENTION",)),
    "cudnn": ("sdpa", ("CUDNN_ATTENTION",)),
    "flex": ("flex_attention", None),
    "flash_attention_2": ("flash_attention_2", None),
}


def conflicts(opts: dict[str, str]) -> str | None:
    return None


def availability(here: Here) -> dict[str, Availability]:
    out = {name: Availability(True) for name in ("eager", "sdpa", "flash", "flex")}
    if not here.cuda:
        out["flash"] = Availability(True, "on CPU the SDPA 'flash' backend is a CPU kernel")
    for name in ("mem_efficient", "cudnn"):
        out[name] = Availability(here.cuda, "" if here.cuda else
                                 f"{here.no_gpu} (the CPU has no such SDPA kernel)")
    if here.rocm:
        out["cudnn"] = Availability(False, "cuDNN attention does not exist on ROCm")
    if importlib.util.find_spec("flash_attn") is None:
        out["flash_attention_2"] = Availability(False, "flash-attn not installed (pip install flash-attn)")
    else:
        out["flash_attention_2"] = Availability(here.cuda, "" if here.cuda else here.no_gpu)
    return out
