#!/usr/bin/env python
"""Which NVML call crashes a sampling process while GPU processes come and go?

`llmtop bench` died with SIGSEGV on a 4 x H200 host (driver 580) inside NvmlBackend.sample,
each time the engine's processes changed (a new tensor-parallel size, a compile). This script
reproduces that: churn threads keep creating and releasing CUDA contexts on every GPU (so the
driver's process lists change all the time), while separate sampling processes each poll one
subset of what NvmlBackend reads, at 100 Hz. A subset whose process dies names the culprit.

    python benchmarks/nvml_stress.py --seconds 60
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import threading
import time

VARIANTS = ("sample", "sample_pid", "processes", "fields", "basic")


def poll(variant: str, seconds: float) -> int:
    """One sampling process: polls `variant` until `seconds` pass; returns the poll count."""
    from llmtop.profilers.nvml import NvmlBackend

    b = NvmlBackend()
    nv, handles = b._nv, b._handles
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        if variant == "sample":
            b.sample(None)
        elif variant == "sample_pid":
            b.sample(os.getppid())
        elif variant == "processes":
            for h in handles:
                try:
                    nv.nvmlDeviceGetComputeRunningProcesses(h)
                except nv.NVMLError:
                    pass
        elif variant == "fields":  # every GPU's links each time, as polls did before the turns
            for i, h in enumerate(handles):
                b._field_values(i, h, time.perf_counter_ns(), read_links=True)
        elif variant == "basic":
            for h in handles:
                nv.nvmlDeviceGetUtilizationRates(h)
                nv.nvmlDeviceGetMemoryInfo(h)
                nv.nvmlDeviceGetPowerUsage(h)
        n += 1
        time.sleep(0.01)
    return n


def churn(stop: threading.Event, count: list[int]) -> None:
    """CUDA primary contexts retained and released on every GPU, over and over, in child
    processes (a context is per process: each child appears in and leaves the process lists)."""
    code = ("import ctypes,sys,time\n"
            "cu=ctypes.CDLL('libcuda.so.1'); cu.cuInit(0); n=ctypes.c_int(); cu.cuDeviceGetCount(ctypes.byref(n))\n"
            "for k in range(n.value):\n"
            "  d=ctypes.c_int(); cu.cuDeviceGet(ctypes.byref(d),k); c=ctypes.c_void_p()\n"
            "  cu.cuDevicePrimaryCtxRetain(ctypes.byref(c),d)\n"
            "time.sleep(0.2)\n")
    while not stop.is_set():
        subprocess.run([sys.executable, "-c", code], check=False)
        count[0] += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--churners", type=int, default=4)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a sampling child
    a = p.parse_args()
    if a.variant:
        print(poll(a.variant, a.seconds))
        return
    stop, count = threading.Event(), [0]
    threads = [threading.Thread(target=churn, args=(stop, count), daemon=True) for _ in range(a.churners)]
    for t in threads:
        t.start()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    children = {v: subprocess.Popen([sys.executable, __file__, "--variant", v, "--seconds", str(a.seconds)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for v in VARIANTS}
    results = {v: c.communicate() + (c.returncode,) for v, c in children.items()}
    stop.set()
    for t in threads:
        t.join(5)
    print(f"{count[0]} short-lived CUDA processes over {a.seconds:.0f} s, {a.churners} at a time")
    for v, (out, err, rc) in results.items():
        verdict = "CRASHED (SIGSEGV)" if rc == -11 else f"exit {rc}"
        polls = int(out) if out.strip().isdigit() else 0
        rate = f"{polls / a.seconds:.1f}/s, {1e3 * a.seconds / polls - 10:.0f} ms each" if polls else "-"
        print(f"  {v:<11} {verdict:<18} polls {polls} ({rate} beside a 10 ms sleep)")
        if rc != 0:
            print("    " + "\n    ".join(err.strip().splitlines()[:8]))


if __name__ == "__main__":
    main()
