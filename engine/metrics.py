"""Latency metrics from token stamps. Pure Python: the engine, the UI and bench share it.

Definitions follow vLLM's benchmarks so our figures compare with theirs:
TTFT = first stamp - request start; TPOT = (last - first) / (n - 1); ITL = every gap;
end-to-end = last stamp - request start. Hence e2e = TTFT + TPOT x (n - 1) exactly, which is
the study's latency formula.

A compile, recompile, CUDA-graph capture or TunableOp tuning that lands inside a run is a
marked stall (an EngineEvent with its duration). vLLM's TPOT keeps it (a user waited for it);
the steady TPOT leaves out every decode gap that overlaps one, so a 31 s recompile in the
middle of 256 tokens reads as what it is, not as a 127 ms TPOT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


BUSY_LOAD = 0.5   # load average per usable CPU above which a ceiling measured then is suspect


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Summary:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        mean = sum(values) / len(values) if values else math.nan
        return cls(mean, percentile(values, 50), percentile(values, 90), percentile(values, 99))


@dataclass
class RunMetrics:
    n_tokens: int            # decode steps (tokens per request)
    batch: int
    prompt_tokens: int       # per request
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    itl_ms: list[float]
    itl: Summary
    tokens_per_s: float      # generated tokens of the whole batch / e2e
    decode_tokens_per_s: float  # batch / TPOT: the steady-state rate
    prefill_tokens_per_s: float  # batch x prompt tokens / TTFT
    tpot_steady_ms: float = 0.0  # mean of the decode gaps that overlap no marked stall
    stalls: int = 0              # marked stalls that overlap the run
    stall_ms: float = 0.0        # their total duration (the part inside the run)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_metrics(start_ns: int, stamps_ns: Sequence[int], batch: int = 1,
                prompt_tokens: int = 0,
                stalls: Sequence[tuple[int, int]] = ()) -> RunMetrics:
    """Metrics of one run from its request start and per-step stamps (perf_counter_ns).

    `stalls` are the (start_ns, end_ns) intervals of marked stalls (EngineEvent t_ns and
    t_ns + duration): those overlapping the run are counted and timed, and the decode gaps
    they touch are left out of `tpot_steady_ms` (equal to `tpot_ms` when there are none).
    """
    if not stamps_ns:
        raise ValueError("a run with no tokens has no latency metrics")
    n = len(stamps_ns)
    ttft = (stamps_ns[0] - start_ns) / 1e6
    e2e = (stamps_ns[-1] - start_ns) / 1e6
    tpot = (stamps_ns[-1] - stamps_ns[0]) / 1e6 / (n - 1) if n > 1 else 0.0
    itl = [(b - a) / 1e6 for a, b in zip(stamps_ns, stamps_ns[1:])]
    inside = [(max(a, start_ns), min(b, stamps_ns[-1])) for a, b in stalls
              if a < stamps_ns[-1] and b > start_ns]
    steady = [(b - a) / 1e6 for a, b in zip(stamps_ns, stamps_ns[1:])
              if not any(s < b and e > a for s, e in inside)]
    return RunMetrics(
        n_tokens=n,
        batch=batch,
        prompt_tokens=prompt_tokens,
        ttft_ms=ttft,
        tpot_ms=tpot,
        e2e_ms=e2e,
        itl_ms=itl,
        itl=Summary.of(itl),
        tokens_per_s=batch * n / (e2e / 1e3) if e2e > 0 else math.nan,
        decode_tokens_per_s=batch / (tpot / 1e3) if tpot > 0 else math.nan,
        prefill_tokens_per_s=batch * prompt_tokens / (ttft / 1e3) if ttft > 0 else math.nan,
        tpot_steady_ms=sum(steady) / len(steady) if steady else tpot if n == 1 else math.nan,
        stalls=len(inside),
        stall_ms=sum(e - s for s, e in inside) / 1e6,
    )


@dataclass
class Roofline:
    """How close a run came to what the hardware allows (DESIGN.md's floors).

    A percentage is None where there is nothing to compare (a 1-token run has no decode step)
    or where the run beat its floor: a floor is a lower bound, so beating it means the ceiling
    under it was measured low. `beaten` names those floors; the engine then re-measures the
    ceiling (engine/ceilings.py hold_floors) and the figure is never shown above 100 %.
    """

    decode_floor_ms: float
    prefill_floor_ms: float
    decode_pct: float | None    # floor / achieved TPOT x 100
    prefill_pct: float | None   # floor / TTFT x 100
    achieved_gb_s: float | None
    beaten: list[str] = field(default_factory=list)   # "decode", "prefill"


def _pct(floor_ms: float, achieved_ms: float, name: str, beaten: list[str]) -> float | None:
    if achieved_ms <= 0 or floor_ms <= 0:
        return None
    pct = 100 * floor_ms / achieved_ms
    if pct > 100 * (1 + 1e-9):
        beaten.append(name)
        return None
    return min(pct, 100.0)


def roofline(metrics: RunMetrics, weight_bytes: int, params: int, kv_bytes_per_token: int,
             mem_bw_gb_s: float, peak_tflops: float, ranks: int = 1,
             head_params: int = 0) -> Roofline:
    """Decode is bounded by reading the weights (and KV) once a step, prefill by FLOPs.

    `params` are the weights that multiply every prompt token; `head_params` those that
    multiply one position per request (the LM head: the prefill keeps the last position's
    logits only), so the FLOP count is what the model really computes, not 2 x params x
    tokens (which charged SmolLM2's 28 M-parameter head to every prompt token).
    The ceilings are one device's; `ranks` tensor-parallel devices split the weights, the KV
    and the FLOPs, so their ceilings add up (without this, 70B at TP=4 read 150 % of its floor).
    """
    mem_bw_gb_s, peak_tflops = mem_bw_gb_s * ranks, peak_tflops * ranks
    ctx = metrics.prompt_tokens + metrics.n_tokens / 2  # mean context length while decoding
    bytes_per_step = weight_bytes + kv_bytes_per_token * ctx * metrics.batch
    decode_floor = bytes_per_step / (mem_bw_gb_s * 1e9) * 1e3
    flops = 2 * (params * metrics.prompt_tokens + head_params) * metrics.batch
    prefill_floor = flops / (peak_tflops * 1e12) * 1e3
    decoded = metrics.n_tokens > 1 and metrics.tpot_ms > 0
    beaten: list[str] = []
    return Roofline(
        decode_floor_ms=decode_floor,
        prefill_floor_ms=prefill_floor,
        decode_pct=_pct(decode_floor, metrics.tpot_ms, "decode", beaten) if decoded else None,
        prefill_pct=_pct(prefill_floor, metrics.ttft_ms, "prefill", beaten),
        achieved_gb_s=bytes_per_step / (metrics.tpot_ms / 1e3) / 1e9 if decoded else None,
        beaten=beaten,
    )


def first_divergence(ref: Sequence[int], ids: Sequence[int]) -> int | None:
    """Index of the first token where two greedy sequences differ; None if neither differs.

    One run stopping earlier than the other (EOS, max tokens, a stop) is not a divergence:
    every comparison of token ids (the guard, the dashboard's rows, bench, compare) uses this.
    """
    for k, (a, b) in enumerate(zip(ref, ids)):
        if a != b:
            return k
    return None
