"""The server's own Prometheus /metrics: what it says of its queue, batch and KV cache.

Parsed with prometheus_client's exposition-format parser. Only the gauges below are read, each
summed over its labels (one value per server, all its models); a server without /metrics, or without any of
them, gives nothing and the record simply has no `server_metrics`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

# llmtop's name -> the servers' gauge names (vLLM renamed its KV gauge in 0.10; both read)
GAUGES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size"),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                       "sglang:token_usage"),
    "batch_size": ("tgi_batch_current_size",),
    "batch_max_tokens": ("tgi_batch_current_max_tokens",),
}


def parse(text: str) -> dict[str, float]:
    """The known gauges in a /metrics page, each summed over its labels; where a server has
    two names for one gauge (vLLM's old and new KV name), the first in GAUGES wins."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    out: dict[str, float] = {}
    for ours, names in GAUGES.items():
        found = next((n for n in names if n in sums), None)
        if found is not None:
            out[ours] = sums[found]
    return out


async def read(client: httpx.AsyncClient, base: str) -> dict[str, float] | None:
    """One reading of `base`/metrics; None when the server has none that we know."""
    try:
        resp = await client.get(base + "/metrics")
        if resp.status_code != 200:
            return None
        values = parse(resp.text)
    except (httpx.HTTPError, ValueError):
        return None
    return values or None


async def poll(client: httpx.AsyncClient, base: str, interval_s: float,
               out: list[dict[str, Any]],
               on_reading: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Appends a stamped reading every `interval_s` until cancelled (each also to `on_reading`,
    the dashboard's live panel); stops at the first miss."""
    while True:
        values = await read(client, base)
        if values is None:
            return
        out.append({"t_ns": time.perf_counter_ns(), **values})
        if on_reading is not None:
            on_reading(out[-1])
        await asyncio.sleep(interval_s)
