"""The engine's host heap under glibc: what makes its resident memory come back down.

A model of a few hundred MB is tensors of 0.1-100 MB each. glibc serves a large block with its
own mmap, given back on free, but raises that threshold to the size of each such block freed
(up to 32 MB), so after the first unload the next model's tensors came from the heap, where
freed pages stay mapped between live ones. Measured with benchmarks/engine_memory.py on the
embedded model (bf16, fp32, bf16, ..., fp32, bf16): the threshold left to glibc, the second
bf16 sat at 792 MB and the third at 836 MB (first 727); fixed at 128 KiB, 754 and 760 MB.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3          # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024    # glibc's own starting value, kept fixed


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:            # not glibc (macOS, musl): its allocator is not this one
        return None


def fix_mmap_threshold() -> None:
    """Every block of 128 KiB or more gets its own mapping, given back when it is freed."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def return_freed() -> None:
    """Gives the freed heap back to the OS (glibc keeps it otherwise): after an fp32 model
    or a static cache is unloaded, the engine's resident memory would stay at its peak."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
