"""Programmatic dependent launch (PDL) for the decode kernels on Hopper and later.

A captured decode step is ~290 kernels in a chain, each waiting for the one before; launched
one after another, each pays its launch and its ramp (programs placed, first loads in flight)
after the one before has drained. Launched with PDL, a kernel's programs are placed while the
one before finishes; they do what depends on nothing before (read a norm's weight, a row's
length), then wait at `wait_for_previous` until the kernel before has finished and its writes
are visible. Every kernel of the step waits before it reads or writes anything a kernel before
it wrote or reads, so the waits chain: kernel n + 1 waits for n, which waited for n - 1. A
kernel launched without PDL (a torch op, a first launch) makes the wait a no-op.

Measured on an H200 (benchmarks/native_decode.py --mode kernels,kernels-serial, 7B bf16):
batch 1 3.895 -> 3.682 ms at prompt 128, 4.182 -> 3.987 at 2048; batch 8 unchanged (4.207 /
4.233). Tried and dropped, same card kind: GEMVs asking L2 for their first weight tiles before
the wait (3.837 ms against 3.682: the requests compete with the finishing kernel's reads), and
GEMVs loading their first weight tile into registers before the wait (3.774 against 3.759 ms
in one call): a step's chain time stays in the GEMVs' own streaming, 26.3 us a GEMV with or
without, 3.39 ms of a 3.75 ms step.
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

    @staticmethod
    def best(device: torch.device) -> Overlap:
        return Overlap(torch.cuda.get_device_capability(device) >= (9, 0))

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

