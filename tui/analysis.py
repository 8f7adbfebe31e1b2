"""Small judgements and number formats the widgets share (pure Python, tested alone)."""

from __future__ import annotations

import math
from typing import Any

from llmtop.engine.endpoint import BACKEND as ENDPOINT

MEMORY_BOUND_PCT = 70.0    # decode at or above this share of its bandwidth floor
COMPUTE_BOUND_PCT = 50.0   # prefill at or above this share of its FLOP floor
LAUNCH_BOUND_BUSY = 60.0   # a GPU busier than this is not waiting on the CPU
# A decode step that spends this share in its ranks' all-reduces is bound by them: that time
# does not shrink with more ranks (each all-reduce moves the same activations), so past it more
# ranks, or faster kernels, buy little; faster links (NVLink over PCIe) or fewer ranks do.
COLLECTIVE_BOUND_PCT = 30.0


def num(value: Any, digits: int = 1, unit: str = "") -> str:
    """A figure, or 'n/a' for None/NaN (never a made-up zero)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def collective_share(pct: float | None, tp: int) -> str:
    """The all-reduce share of a decode step in words (tensor parallelism only)."""
    if tp <= 1:
        return ""
    if pct is None or (isinstance(pct, float) and math.isnan(pct)):
        return f"all-reduce share of a step across {tp} ranks not measured yet (f profiles)"
    return f"{pct:.0f}% of each decode step in all-reduce across {tp} ranks"


def bottleneck(device: str, roof: dict[str, Any] | None, gpu_busy_pct: float | None,
               collective_pct: float | None = None, tp: int = 1,
               opts: dict[str, str] | None = None) -> tuple[str, str]:
    """What bounds the run: (kind, one line).
    kind: memory | collective | compute | launch | kernel | overhead | none.

    From the decode and prefill floors (roofline), on a GPU its busy %, and with tensor
    parallelism the share of a decode step in the ranks' collectives (from a step profile).
    Decode reads every weight once a step, so near the bandwidth floor nothing but less data
    helps; a GPU that is mostly idle between kernels waits on the CPU launching them, which CUDA
    graphs remove; ranks that spend a third of each step in all-reduce wait on each other.
    `opts`, the run's options: the advice names only what the run has not applied yet.
    """
    if device == ENDPOINT:
        return "none", ("the server's own: its kernels and ceilings are not visible from here; "
                        "the stamps include the network and its streaming interval")
    line = _bottleneck(device, roof, gpu_busy_pct, collective_pct, tp, opts or {})
    share = collective_share(collective_pct, tp)
    if share and line[0] not in ("collective", "none"):
        return line[0], f"{line[1]}; {share}"
    return line


def next_step(opts: dict[str, str], steps: list[tuple[str, str, str]]) -> str:
    """': try <what>' for the first (axis, value, what) of `steps` the run has not applied, or
    '' when it has them all."""
    for axis, value, what in steps:
        if opts.get(axis) != value:
            return f": try {what}"
    return ""


def _bottleneck(device: str, roof: dict[str, Any] | None, gpu_busy_pct: float | None,
                collective_pct: float | None, tp: int, opts: dict[str, str]) -> tuple[str, str]:
    if not roof:
        return "none", "not measured yet (a run's first tokens)"
    dec = roof.get("decode_pct")
    pre = roof.get("prefill_pct")
    if dec is None or (isinstance(dec, float) and math.isnan(dec)):
        return "none", "decode not measured yet (one token so far)"
    gb = roof.get("achieved_gb_s")
    on_gpu = device.startswith("cuda")
    if dec >= MEMORY_BOUND_PCT:
        return "memory", (f"memory-bound: decode at {dec:.0f}% of the bandwidth floor "
                          f"({num(gb, 0)} GB/s); only fewer bytes (dtype, batch) go faster")
    if tp > 1 and collective_pct is not None and collective_pct >= COLLECTIVE_BOUND_PCT:
        return "collective", (f"collective-bound: {collective_share(collective_pct, tp)}; decode at "
                              f"{dec:.0f}% of the {tp} devices' floor: faster links or fewer "
                              f"ranks help")
    if on_gpu and gpu_busy_pct is not None and gpu_busy_pct < LAUNCH_BOUND_BUSY:
        return "launch", (f"launch-bound: GPU busy {gpu_busy_pct:.0f}%, idle between kernels; "
                          f"decode at {dec:.0f}% of its floor"
                          + next_step(opts, [("compile", "full", "compile=full (kv=static)"),
                                             ("backend", "native", "backend=native")]))
    if pre is not None and not math.isnan(pre) and pre >= COMPUTE_BOUND_PCT:
        return "compute", (f"compute-bound prefill: {pre:.0f}% of the FLOP floor; decode at "
                           f"{dec:.0f}% of the bandwidth floor")
    if on_gpu:
        busy = "n/a" if gpu_busy_pct is None else f"{gpu_busy_pct:.0f}%"
        return "kernel", (f"kernel-bound: GPU busy {busy} yet decode at {dec:.0f}% of the bandwidth "
                          f"floor: the kernels themselves are slow (attention, GEMM choice)")
    return "overhead", (f"overhead-bound: decode at {dec:.0f}% of the bandwidth floor; on a CPU "
                        f"framework overhead per step dominates"
                        + next_step(opts, [("kv", "static", "kv=static"),
                                           ("backend", "native", "backend=native")]))


def bar(fraction: float | None, width: int) -> str:
    """A horizontal bar of block characters, eighths for the partial cell."""
    if fraction is None or math.isnan(fraction):
        return "·" * width
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    out = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return out + " " * (width - len(out))


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int, top: float | None = None) -> str:
    """The last `width` values as one line of block heights, scaled to `top` (or their max)."""
    vals = [v for v in values[-width:]]
    real = [v for v in vals if v is not None]
    if not real:
        return ""
    hi = top if top else max(real) or 1.0
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        else:
            out.append(SPARK[min(len(SPARK) - 1, max(0, int(v / hi * (len(SPARK) - 1) + 0.5)))])
    return "".join(out)


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f}"


CPU_RANKS = 2    # gloo ranks on a CPU share its cores: more only slows each step further


def tp_choices(heads: int, kv_heads: int, device: str, gpu_count: int) -> list[tuple[int, bool, str]]:
    """(size, can run, why not) for each size worth showing: every size that splits the heads
    and fits the devices, and the powers of two up to the device count that do not (greyed,
    with the reason), so the user sees why 2 is missing on a 9-head model."""
    on_gpu = device.startswith("cuda")
    limit = gpu_count if on_gpu else CPU_RANKS
    limit = max(limit, 1)
    g = math.gcd(heads, kv_heads) if heads and kv_heads else 1
    sizes = {d for d in range(1, limit + 1) if g % d == 0}
    k = 2
    while k <= limit:
        sizes.add(k)
        k *= 2
    out = []
    for n in sorted(sizes):
        if g % n:
            out.append((n, False, f"does not divide {heads} attention heads and {kv_heads} KV heads"))
        elif n > 1 and not on_gpu and gpu_count > 0:
            out.append((n, False, "on a CPU only where torch sees no GPU: use device cuda"))
        elif n > 1 and not on_gpu:
            out.append((n, True, "gloo ranks sharing the CPU cores"))
        elif n > 1:
            out.append((n, True, f"{n} of the {gpu_count} GPUs, NCCL"))
        else:
            out.append((n, True, ""))
    return out
