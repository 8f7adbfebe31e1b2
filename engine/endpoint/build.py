"""Run records from streamed requests, in the engine run's schema (engine/record.py).

Per request, the figures are engine/metrics.py's run_metrics over the tokens' arrival stamps
(TTFT, TPOT, ITL, end-to-end: vLLM's definitions); several concurrent requests are summarised
as vLLM's benchmark does (means and percentiles over requests, ITL pooled over all gaps,
throughput over the wall time of the whole batch, goodput against an SLO).

Tokens per chunk come from the server: its per-token events (TGI), a count in every chunk
(vLLM's continuous usage), logprob entries, or its usage total when that equals the number of
chunks (one token each). A chunk of k > 1 tokens gives k tokens with the chunk's one arrival
stamp (ITL 0 inside it) and each carries `chunk_tokens: k`; when the server's total differs
from the chunks and it never said which chunk held which, the figures are per chunk, and the
record says so (`endpoint.token_counts`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from llmtop.engine import record as records
from llmtop.engine.endpoint import BACKEND
from llmtop.engine.endpoint.stream import Request, Server, Trace
from llmtop.engine.metrics import RunMetrics, Summary, run_metrics

STAMPS = ("arrival of each streamed chunk at this client (perf_counter_ns): includes the "
          "network and the server's streaming interval")

COUNT_BASIS = {
    "server": "the server counted each chunk's tokens",
    "usage": "one token per chunk (the server's usage total)",
    "no_usage": "one token per chunk assumed (the server sent no count)",
    "per_chunk": "figures are per chunk, not per token (the server's total differs and it did "
                 "not say which chunk held which)",
}


def token_counts(trace: Trace) -> tuple[list[int], str]:
    """Tokens each chunk carries, and how that is known (a COUNT_BASIS key)."""
    chunks = trace.chunks
    if chunks and all(c.tokens is not None for c in chunks):
        return [int(c.tokens or 0) for c in chunks], "server"
    if trace.usage_tokens is None:
        return [1] * len(chunks), "no_usage"
    if trace.usage_tokens == len(chunks):
        return [1] * len(chunks), "usage"
    return [1] * len(chunks), "per_chunk"


def tokens_of(trace: Trace, counts: list[int]) -> list[dict[str, Any]]:
    """The token entries of one request: index, id (None where the server sends none), text,
    t_ns; tokens of one chunk share its stamp and its text sits on the chunk's first token."""
    out: list[dict[str, Any]] = []
    for chunk, k in zip(trace.chunks, counts):
        for j in range(k):
            entry: dict[str, Any] = {"index": len(out),
                                     "id": chunk.ids[j] if j < len(chunk.ids) else None,
                                     "text": chunk.text if j == 0 else "", "t_ns": chunk.t_ns}
            if k > 1:
                entry["chunk_tokens"] = k
            out.append(entry)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return asdict(Summary.of(values))


def aggregate(per: list[RunMetrics], duration_ms: float) -> RunMetrics:
    """The record's `metrics` for a batch of concurrent requests (one request: its own).

    TTFT, TPOT and end-to-end are means over requests (vLLM's "Mean TTFT", ...); ITL is every
    gap of every request; tokens/s is all output tokens over the batch's wall time.
    """
    if len(per) == 1:
        return per[0]
    k = len(per)
    itl = [g for m in per for g in m.itl_ms]
    ttft = sum(m.ttft_ms for m in per) / k
    tpot = sum(m.tpot_ms for m in per) / k
    total = sum(m.n_tokens for m in per)
    prompt = per[0].prompt_tokens
    return RunMetrics(
        n_tokens=total // k, batch=k, prompt_tokens=prompt, ttft_ms=ttft, tpot_ms=tpot,
        e2e_ms=sum(m.e2e_ms for m in per) / k, itl_ms=itl, itl=Summary.of(itl),
        tpot_steady_ms=sum(m.tpot_steady_ms for m in per) / k,   # = TPOT: no stall is marked
        tokens_per_s=total / (duration_ms / 1e3) if duration_ms > 0 else float("nan"),
        decode_tokens_per_s=k / (tpot / 1e3) if tpot > 0 else float("nan"),
        prefill_tokens_per_s=k * prompt / (ttft / 1e3) if ttft > 0 else float("nan"))


def serving(per: list[RunMetrics], failed: int, duration_ms: float,
            slo: dict[str, float] | None) -> dict[str, Any]:
    """vLLM's benchmark summary: per-request distributions, throughputs, goodput."""
    seconds = duration_ms / 1e3
    out: dict[str, Any] = {
        "completed": len(per), "failed": failed, "duration_ms": duration_ms,
        "total_output_tokens": sum(m.n_tokens for m in per),
        "request_throughput": len(per) / seconds if seconds > 0 else None,
        "output_throughput": sum(m.n_tokens for m in per) / seconds if seconds > 0 else None,
        "ttft_ms": summary([m.ttft_ms for m in per]),
        "tpot_ms": summary([m.tpot_ms for m in per if m.n_tokens > 1]),
        "itl_ms": summary([g for m in per for g in m.itl_ms]),
        "e2el_ms": summary([m.e2e_ms for m in per]),
    }
    if slo:
        good = [m for m in per if m.ttft_ms <= slo.get("ttft", float("inf"))
                and m.tpot_ms <= slo.get("tpot", float("inf"))
                and m.e2e_ms <= slo.get("e2el", float("inf"))]
        out["slo"] = dict(slo)
        out["good_requests"] = len(good)
        out["goodput"] = len(good) / seconds if seconds > 0 else None
    return out


def build(server: Server, req: Request, traces: list[Trace],
          slo: dict[str, float] | None = None,
          server_metrics: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The run record of one batch of streamed requests; None when no token arrived at all.

    A request that failed after some tokens keeps them (its figures are in `requests`, the
    record's `stopped` is "error", or "stop" after Ctrl-C, and `endpoint.errors` says why); one with no token is
    counted as failed, as vLLM counts it.
    """
    tokens, per, bases, errors = [], [], [], []
    for i, trace in enumerate(traces):
        counts, basis = token_counts(trace)
        entries = tokens_of(trace, counts)
        tokens.append(entries)
        bases.append(basis)
        if trace.error is not None:
            errors.append({"request": i, "kind": trace.error.kind, "message": str(trace.error)})
        if entries:
            per.append(run_metrics(trace.start_ns, [t["t_ns"] for t in entries], 1,
                                   trace.prompt_tokens or 0))
    if not per:
        return None
    start = min(t.start_ns for t in traces)
    end = max(e[-1]["t_ns"] for e in tokens if e)
    duration_ms = (end - start) / 1e6
    model = {"name": server.model, "source": server.url, "server": server.kind,
             "params": None, "weight_bytes": None, "dtype": "", "device": BACKEND,
             "synthetic": False}
    config = {"model": server.model, "device": BACKEND, "dtype": "", "tp": 1, "gpus": None,
              "opts": {"backend": BACKEND}, "url": server.url, "api": server.api}
    request = {**asdict(req), "batch": len(traces)}
    stopped = "" if not errors else "stop" if all(e["kind"] == "stopped" for e in errors) else "error"
    rec = records.build(model, config, request, tokens, aggregate(per, duration_ms).to_dict(),
                        {}, stopped, probe_torch=False)
    rec["start_ns"] = start
    rec["requests"] = [m.to_dict() for m in per]
    rec["serving"] = serving(per, sum(1 for e in tokens if not e), duration_ms, slo)
    multi = sum(1 for e in tokens for t in e if t.get("chunk_tokens") and t["text"])
    rec["endpoint"] = {
        "url": server.url, "api": server.api, "server": server.kind, "model": server.model,
        "stamps": STAMPS,
        "token_counts": sorted(set(bases), key=list(COUNT_BASIS).index),
        "token_counts_meaning": {b: COUNT_BASIS[b] for b in set(bases)},
        "chunks": [len(t.chunks) for t in traces],
        "multi_token_chunks": multi,
        "usage_tokens": [t.usage_tokens for t in traces],
        "finish": [t.finish for t in traces],
        "errors": errors,
        "server_info": server.info,
    }
    if server_metrics:
        rec["endpoint"]["server_metrics"] = server_metrics
    return rec
