"""vllm.platforms: `current_platform`, the platform this vLLM build runs on.

As in vLLM, `current_platform` is resolved lazily on first access (module `__getattr__`) to a
`Platform` with `device_type` ("cuda", "rocm", "cpu", ...) and the predicates `is_cuda()`,
`is_rocm()`, `is_cpu()`. Real vLLM detects it from the build and the machine; this fake is a CPU
build unless FAKE_VLLM_PLATFORM names another device type (tests of the CUDA path set it).
"""

from __future__ import annotations

import os


from .interface import Platform

_current_platform: Platform | None = None


def __getattr__(name: str):
    global _current_platform
    if name == "current_platform":
        if _current_platform is None:
            _current_platform = Platform(os.environ.get("FAKE_VLLM_PLATFORM", "cpu"))
        return _current_platform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
