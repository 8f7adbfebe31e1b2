"""One point of a sweep: what it keeps of each run record, and its figures over the repeats.

Pure functions of the records (no engine, no files), so a report rebuilt from points.jsonl
recomputes every figure with today's formulas (`resummarize`). The figures a newer engine adds
to its run records (`metrics.tpot_steady_ms`, `metrics.stalls`, `metrics.stall_ms`, the guard's
identical / equivalent / diverged) are optional keys: an older record simply lacks them.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from llmtop.bench_plan import BASELINE
from llmtop.bench_store import clean
from llmtop.engine.metrics import first_divergence

STALL_FIELDS = ("tpot_steady_ms", "stalls", "stall_ms")
GUARD_FIELDS = ("status", "diverged_at", "margin", "tolerance")


def compact_run(record: dict[str, Any], telemetry: dict[str, Any],
                events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a bench keeps of a run record: every stamp and id, the metrics, no repetition."""
    tokens = record["tokens"]
    first = tokens[0] if tokens else []
    m = record["metrics"]
    run = {
        "start_ns": record["start_ns"],
        "t_ns": [t["t_ns"] for t in first],
        "ids": [[t["id"] for t in req] for req in tokens],
        "text": "".join(t["text"] for t in first),
        "n_tokens": m["n_tokens"],
        "ttft_ms": m["ttft_ms"],
        "tpot_ms": m["tpot_ms"],
        "e2e_ms": m["e2e_ms"],
        "itl_p50_ms": m["itl"]["p50"],
        "itl_p99_ms": m["itl"]["p99"],
        "stopped": record.get("stopped", ""),
        "telemetry": telemetry,
        "engine_events": events,
    }
    run.update({k: m[k] for k in STALL_FIELDS if m.get(k) is not None})
    guard = record.get("guard") or {}
    if guard.get("status"):
        run["guard"] = {k: guard.get(k) for k in GUARD_FIELDS}
    return run


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return 0.0 if values else None
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[dict[str, Any]], batch: int, prompt_len: int,
              meta: dict[str, Any] | None, tp: int = 1) -> dict[str, Any]:
    """A point's figures from its measured runs: means over the repeats (medians and spread
    alongside), throughputs, and the roofline from the mean TTFT and TPOT."""
    from llmtop.engine import metrics

    ttft = [r["ttft_ms"] for r in runs]
    tpot = [r["tpot_ms"] for r in runs]
    e2e = [r["e2e_ms"] for r in runs]
    n = runs[0]["n_tokens"]
    out: dict[str, Any] = {
        "n_tokens": n,
        "ttft_ms": mean(ttft), "ttft_ms_median": metrics.percentile(ttft, 50),
        "ttft_ms_min": min(ttft), "ttft_ms_std": _std(ttft),
        "tpot_ms": mean(tpot), "tpot_ms_median": metrics.percentile(tpot, 50),
        "tpot_ms_min": min(tpot), "tpot_ms_std": _std(tpot),
        "e2e_ms": mean(e2e),
    }
    out["tokens_per_s"] = batch * n / (out["e2e_ms"] / 1e3) if out["e2e_ms"] else None
    out["prefill_tokens_per_s"] = batch * prompt_len / (out["ttft_ms"] / 1e3) if out["ttft_ms"] else None
    out["decode_tokens_per_s"] = batch / (out["tpot_ms"] / 1e3) if out["tpot_ms"] else None
    if meta and meta.get("ceilings") and meta.get("model"):
        model, ceil = meta["model"], meta["ceilings"]
        pseudo = metrics.RunMetrics(n, batch, prompt_len, out["ttft_ms"], out["tpot_ms"],
                                    out["e2e_ms"], [], metrics.Summary.of([]), 0, 0, 0)
        roof = metrics.roofline(pseudo, model["weight_bytes"], model["params"],
                                meta.get("kv_bytes_per_token") or 0, ceil["mem_bw_gb_s"],
                                ceil["peak_tflops"], ranks=tp)
        out["roofline"] = asdict(roof)
    out.update(_stalls(runs))
    out.update(_power(runs))
    check = guard_check(runs[0].get("guard"))
    if check:
        out["guard_check"] = check
    return clean(out)


def _stalls(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady TPOT (the mean over the repeats) and the marked stalls (their totals), when
    every run's record carried them."""
    if not all(r.get("tpot_steady_ms") is not None for r in runs):
        return {}
    return {"tpot_steady_ms": mean([r["tpot_steady_ms"] for r in runs]),
            "stalls": sum(int(r.get("stalls") or 0) for r in runs),
            "stall_ms": sum(float(r.get("stall_ms") or 0.0) for r in runs)}


def _power(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tele = [r.get("telemetry") or {} for r in runs]
    if not tele or not all(t.get("available") for t in tele):
        return {}
    out: dict[str, Any] = {"mean_power_w": mean([t["mean_power_w"] for t in tele]),
                           "energy_j_per_token": mean([t.get("energy_j_per_token") for t in tele])}
    per_gpu: dict[str, dict[str, Any]] = {}
    for gpu in sorted({g for t in tele for g in t.get("per_gpu") or {}}, key=int):
        readings = [t["per_gpu"][gpu] for t in tele if gpu in (t.get("per_gpu") or {})]
        per_gpu[gpu] = {k: mean([r.get(k) for r in readings])
                        for k in ("power_w", "util_pct", "mem_used_gib")}
    if per_gpu:
        out["per_gpu"] = per_gpu
    return out


def guard_check(guard: dict[str, Any] | None) -> str:
    """The engine's correctness guard on the check prompt, in words: identical, equivalent at
    k (ids differ only where rounding can flip a near-tie) or diverged at k; "" if not recorded."""
    status = (guard or {}).get("status")
    if not status:
        return ""
    at = guard.get("diverged_at")
    return status if status == "identical" or at is None else f"{status} at {at}"


def guard(ids: list[list[int]], base: list[list[int]] | None) -> str:
    """This point's greedy ids against the baseline's at the same point."""
    if base is None:
        return "no baseline"
    k = first_divergence(base[0] if base else [], ids[0] if ids else [])
    return "identical" if k is None else f"diverged at {k}"


def point_line(point: dict[str, Any]) -> str:
    """A measured point in one line, for the progress log."""
    text = f"TTFT {point['ttft_ms']:.2f} ms  TPOT {point['tpot_ms']:.2f} ms"
    if point.get("tpot_steady_ms") is not None:
        text += f"  steady TPOT {point['tpot_steady_ms']:.2f} ms"
    if point.get("stalls"):
        text += f"  {point['stalls']} stalls ({point.get('stall_ms') or 0:.0f} ms)"
    if point.get("guard_check"):
        text += f"  guard {point['guard_check']}"
    return text


def resummarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each measured point's figures recomputed from its runs, so a rebuilt
    report carries today's formulas (the roofline's TP scaling came after some sweeps)."""
    meta = next((r for r in records if r.get("type") == "meta"), None)
    out = []
    for r in records:
        if r.get("type") == "point" and r.get("status") == "ok" and r.get("runs"):
            r = {**r, **summarize(r["runs"], r["batch"], r["prompt_len"], meta, int(r.get("tp") or 1))}
        out.append(r)
    return out


def series_key(point: dict[str, Any]) -> str:
    return f"{point['config']}|tp{point['tp']}|p{point['prompt_len']}|n{point['new_tokens']}"


def baseline_key(point: dict[str, Any]) -> str:
    """The key of the baseline's point that `point` is compared with (same sizes)."""
    return series_key({**point, "config": BASELINE}) + f"|b{point['batch']}"
