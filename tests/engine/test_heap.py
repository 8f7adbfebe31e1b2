"""engine/heap.py: after a large block is freed, a 1 MiB block still gets its own mapping (so
an unloaded model's memory goes back to the OS), where glibc alone would have raised its mmap
threshold to the freed block's size and served the next one from the heap."""

import ctypes
import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    from llmtop.engine import heap
    heap.fix_mmap_threshold()
libc.free(libc.malloc(8 << 20))           # a model's tensor, unloaded
before = libc.mallinfo2().hblks
libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)    # 1: its own mapping; 0: from the heap
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc 2.33+ only")
@pytest.mark.parametrize("mode, mapped", [("fixed", "1"), ("glibc", "0")])
def test_a_block_after_an_unload_is_mapped_on_its_own(mode, mapped):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == mapped
