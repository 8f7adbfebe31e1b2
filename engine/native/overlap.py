"""Programmatic dependent launch (PDL) for the decode kernels on Hopper and later.

A captured decode step is ~290 kernels in a chain, each waiting for the one before; launched
one after another, each pays its launch and its ramp (programs placed, first loads in flight)
after the one before has drained. Launched with PDL, a kernel's programs are placed while the
one before finishes; they do what depends on nothing before (ask L2 for weights, load a norm's
weight), then wait at `wait_for_previous` until the kernel before has finished and its writes
are visible. Every kernel of the step waits before it reads or writes anything a kernel before
it wrote or reads, so the waits chain: kernel n + 1 waits for n, which waited for n - 1. A
kernel launched without PDL (a torch op, a first launch) makes the wait a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Overlap:
    """How each kernel is launched after the one before it."""
    pdl: bool = False        # programmatic dependent launch (compute capability 9.0 and later)
    prefetch: bool = False   # under pdl, GEMVs ask L2 for their first tiles before the wait

    @staticmethod
    def best(device: torch.device) -> Overlap:
        on = torch.cuda.get_device_capability(device) >= (9, 0)
        return Overlap(on, on)

    def launch(self) -> dict[str, bool]:
        """A kernel's PDL constant and its launch option."""
        return dict(PDL=self.pdl, launch_pdl=self.pdl)


SERIAL = Overlap()


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Waits until the kernel before has finished and its writes are visible, then lets the
    next kernel's programs be placed."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs):
    """Asks L2 for the lines at ptrs; no register is loaded, so nothing waits for it."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)
