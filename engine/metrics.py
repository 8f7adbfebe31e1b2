"""Latency metrics from token stamps. Pure Python: the engine, the UI and bench share it.

Definitions follow vLLM's benchmarks so our figures compare with theirs:
TTFT = first stamp - request start; TPOT = (last - first) / (n - 1); ITL = every gap;
end-to-end = last stamp - request start. Hence e2e = TTFT + TPOT x (n - 1) exactly, which is
the study's latency formula.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence


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
    # the decode gaps that overlap no marked stall (compile, capture, ...): TPOT without them
    tpot_steady_ms: float = math.nan
    stalls: int = 0          # marked stalls inside the run
    stall_ms: float = 0.0    # their total duration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_metrics(start_ns: int, stamps_ns: Sequence[int], batch: int = 1,
                prompt_tokens: int = 0,
                stalls: Sequence[tuple[int, int]] = ()) -> RunMetrics:
    """Metrics of one run from its request start and per-step stamps (perf_counter_ns).

    `stalls`: (start_ns, end_ns) of marked stalls (EngineEvent t_ns, t_ns + duration); those
    inside the run are counted, and the decode gaps they overlap are left out of tpot_steady_ms.
    """
    if not stamps_ns:
        raise ValueError("a run with no tokens has no latency metrics")
    n = len(stamps_ns)
    ttft = (stamps_ns[0] - start_ns) / 1e6
    e2e = (stamps_ns[-1] - start_ns) / 1e6
    tpot = (stamps_ns[-1] - stamps_ns[0]) / 1e6 / (n - 1) if n > 1 else 0.0
    itl = [(b - a) / 1e6 for a, b in zip(stamps_ns, stamps_ns[1:])]
    inside = [(a, b) for a, b in stalls if b > start_ns and a < stamps_ns[-1]]
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
        tpot_steady_ms=sum(steady) / len(steady) if steady else math.nan,
        stalls=len(inside),
        stall_ms=sum((e - s) / 1e6 for s, e in inside),
    )


@dataclass
class Roofline:
    """How close a run came to what the hardware allows (DESIGN.md's floors)."""

    decode_floor_ms: float
    prefill_floor_ms: float
    decode_pct: float    # floor / achieved TPOT x 100
    prefill_pct: float
    achieved_gb_s: float


def roofline(metrics: RunMetrics, weight_bytes: int, params: int, kv_bytes_per_token: int,
             mem_bw_gb_s: float, peak_tflops: float, ranks: int = 1) -> Roofline:
    """Decode is bounded by reading the weights (and KV) once a step, prefill by FLOPs.

    The ceilings are one device's; `ranks` tensor-parallel devices split the weights, the KV
    and the FLOPs, so their ceilings add up (without this, 70B at TP=4 read 150 % of its floor).
    """
    mem_bw_gb_s, peak_tflops = mem_bw_gb_s * ranks, peak_tflops * ranks
    ctx = metrics.prompt_tokens + metrics.n_tokens / 2  # mean context length while decoding
    bytes_per_step = weight_bytes + kv_bytes_per_token * ctx * metrics.batch
    decode_floor = bytes_per_step / (mem_bw_gb_s * 1e9) * 1e3
    prefill_floor = 2 * params * metrics.prompt_tokens * metrics.batch / (peak_tflops * 1e12) * 1e3
    achieved = bytes_per_step / (metrics.tpot_ms / 1e3) / 1e9 if metrics.tpot_ms > 0 else math.nan
    return Roofline(
        decode_floor_ms=decode_floor,
        prefill_floor_ms=prefill_floor,
        decode_pct=100 * decode_floor / metrics.tpot_ms if metrics.tpot_ms > 0 else math.nan,
        prefill_pct=100 * prefill_floor / metrics.ttft_ms if metrics.ttft_ms > 0 else math.nan,
        achieved_gb_s=achieved,
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
