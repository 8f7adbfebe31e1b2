"""Engine backends: one module per way of running a loaded model (base.py says what one is)."""

from __future__ import annotations

from .base import Backend


def backend_class(opts: dict[str, str]) -> type[Backend]:
    """The backend that runs a configuration (imported only when chosen: vllm's module is
    cheap, but a backend's own imports need not be)."""
    if opts.get("backend", "hf") == "vllm":
        from .vllm import VllmBackend

        return VllmBackend
    if opts.get("backend", "hf") == "native":
        from .native import NativeBackend

        return NativeBackend
    from .hf import HfBackend, PagedBackend

    return PagedBackend if opts.get("kv") == "paged" else HfBackend
