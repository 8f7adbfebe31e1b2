"""`llmtop attach URL --headless`: profile a running inference server, token by token.

llmtop is only a client here: it opens no port, keeps TLS verification on, reads the API key
from an environment variable (sent in a header, never written anywhere) and refuses a URL
outside loopback unless --allow-remote says so. `--batch N` sends N identical streamed requests
at once (vLLM's benchmark's concurrency); `llmtop bench --endpoint URL` measures its points
through `connect` and `bench_runs` below.

Faults (unreachable server, wrong path, 4xx/5xx, a reply that does not stream, a stream cut or a
server that dies mid-way): one line on stderr and exit code 2, after the table and the --json
record of whatever tokens did arrive. Imports no torch.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

from llmtop.attach_options import DEFAULT_KEY_ENV, DEFAULT_TIMEOUT_S
from llmtop.engine.endpoint import SLO_KEYS, build, prom
from llmtop.engine.endpoint.stream import (Chunk, EndpointError, Request, Server, Trace, base_url,
                                           detect, one_line, open_client, stream_many)

METRICS_INTERVAL_S = 0.5


class AttachError(Exception):
    """A bad URL or argument, or a server llmtop cannot talk to: one line, exit code 2."""


def check_url(url: str, allow_remote: bool) -> str:
    """The base URL, after the loopback rule: a remote server needs --allow-remote."""
    try:
        base = base_url(url)
    except EndpointError as e:
        raise AttachError(str(e)) from e
    host = urlsplit(base).hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not allow_remote:
            raise AttachError(f"{host} is not a loopback address: pass --allow-remote to profile "
                              f"a server on another host")
    return base


def parse_slo(text: str | None) -> dict[str, float] | None:
    """`ttft=200,tpot=50` -> {"ttft": 200.0, "tpot": 50.0} (milliseconds, vLLM's --goodput)."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in SLO_KEYS:
            raise AttachError(f"--slo takes {', '.join(k + '=MS' for k in SLO_KEYS)}, "
                              f"not {part.strip()!r}")
        try:
            out[key] = float(value)
        except ValueError:
            raise AttachError(f"--slo {key}: {value!r} is not a number of milliseconds") from None
    return out


def _key(api_key_env: str) -> str | None:
    return os.environ.get(api_key_env) or None


def connect(url: str, api: str | None = None, model: str | None = None,
            allow_remote: bool = False, api_key_env: str = DEFAULT_KEY_ENV,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> Server:
    """The server at `url`, its API and model (raises AttachError with the one-line reason)."""
    base = check_url(url, allow_remote)

    async def go() -> Server:
        async with open_client(_key(api_key_env), timeout_s) as client:
            return await detect(client, base, api, model)

    try:
        return asyncio.run(go())
    except EndpointError as e:
        raise AttachError(str(e)) from e


def measure(server: Server, req: Request, batch: int = 1, slo: dict[str, float] | None = None,
            api_key_env: str = DEFAULT_KEY_ENV, timeout_s: float = DEFAULT_TIMEOUT_S,
            on_chunk: Callable[[int, Chunk], None] | None = None
            ) -> tuple[dict[str, Any] | None, list[EndpointError]]:
    """One batch of `batch` concurrent streamed requests: its run record (None if no token
    arrived) and the faults that ended requests early. /metrics is read meanwhile."""
    if batch < 1:
        raise AttachError(f"--batch must be at least 1, not {batch}")

    async def go() -> tuple[dict[str, Any] | None, list[EndpointError]]:
        async with open_client(_key(api_key_env), timeout_s) as client:
            readings: list[dict[str, Any]] = []
            poller = asyncio.create_task(prom.poll(client, server.url, METRICS_INTERVAL_S, readings))
            traces = [Trace(start_ns=time.perf_counter_ns()) for _ in range(batch)]
            try:
                await stream_many(client, server, req, traces, on_chunk)
            except asyncio.CancelledError:   # Ctrl-C: what arrived makes the record
                pass
            finally:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        errors = [t.error for t in traces if t.error is not None]
        return build.build(server, req, traces, slo, readings), errors

    try:
        return asyncio.run(go())
    except EndpointError as e:   # a request this API cannot carry: nothing was sent
        raise AttachError(str(e)) from e


def bench_runs(server: Server, req: Request, batch: int, repeat: int, warmup: int,
               api_key_env: str = DEFAULT_KEY_ENV, timeout_s: float = DEFAULT_TIMEOUT_S
               ) -> tuple[list[dict[str, Any]], str]:
    """The measured run records of one bench point (warm-ups dropped), in the engine's run
    schema, so bench's compact_run and summarize take them as they are; and the fault that
    ended the point ("" when none)."""
    runs: list[dict[str, Any]] = []
    for i in range(warmup + repeat):
        rec, errors = measure(server, req, batch, api_key_env=api_key_env, timeout_s=timeout_s)
        if errors and all(e.kind == "stopped" for e in errors):
            raise KeyboardInterrupt   # Ctrl-C: the sweep stops; this point's cut runs are not kept
        if errors or rec is None:
            return runs, str(errors[0]) if errors else "no token arrived"
        if i >= warmup:
            runs.append(rec)
    return runs, ""


def bench_point(server: Server, req: Request, batch: int, repeat: int = 3, warmup: int = 1,
                api_key_env: str = DEFAULT_KEY_ENV, timeout_s: float = DEFAULT_TIMEOUT_S
                ) -> dict[str, Any]:
    """One point of `llmtop bench --endpoint URL` in bench's points.jsonl shape: config
    "endpoint", batch = concurrent requests, bench's own compact runs and summary figures."""
    from llmtop.bench_plan import endpoint_key   # bench's shapes, one place
    from llmtop.bench_points import compact_run, summarize

    runs, error = bench_runs(server, req, batch, repeat, warmup, api_key_env, timeout_s)
    prompt_len = int(runs[0]["metrics"]["prompt_tokens"]) if runs else 0
    point: dict[str, Any] = {
        "type": "point", "key": endpoint_key(req.max_new_tokens, batch),
        "config": build.BACKEND, "tp": 1, "prompt_len": prompt_len,
        "new_tokens": req.max_new_tokens, "batch": batch, "opts": {"backend": build.BACKEND},
        "model": server.model, "device": server.url, "repeat": repeat, "warmup": warmup,
        "unix": time.time(), "status": "error" if error else "ok", "error": error,
        "endpoint": {"url": server.url, "api": server.api, "server": server.kind},
        "runs": [] if error else [_without_stalls(compact_run(r, {}, [])) for r in runs],
    }
    if not error:
        point["serving"] = [r["serving"] for r in runs]
        point.update(summarize(point["runs"], batch, prompt_len, None))
    return point


def _without_stalls(run: dict[str, Any]) -> dict[str, Any]:
    """A server's stalls are not marked (only llmtop's engine marks its own), so its points
    claim no steady TPOT and no stall count."""
    from llmtop.bench_points import STALL_FIELDS

    return {k: v for k, v in run.items() if k not in STALL_FIELDS}


# ---- the headless command -------------------------------------------------------------------

def metrics_table(rec: dict[str, Any]) -> str:
    """The figures of an endpoint record as aligned text, read from the record itself."""
    m, s, e = rec["metrics"], rec["serving"], rec["endpoint"]
    k, n = m["batch"], m["n_tokens"]
    each = f" (mean of {k} requests)" if k > 1 else ""
    rows = [
        f"server    {e['server']} at {e['url']}  model {e['model']}  api {e['api']}",
        "stamps    on arrival here: the network and the server's streaming interval included",
        f"TTFT      {m['ttft_ms']:10.2f} ms{each}   p50 {s['ttft_ms']['p50']:.2f}  "
        f"p99 {s['ttft_ms']['p99']:.2f}",
        f"TPOT      {m['tpot_ms']:10.2f} ms{each}   decode {m['decode_tokens_per_s']:,.1f} tok/s",
        f"ITL       mean {m['itl']['mean']:.2f}  p50 {m['itl']['p50']:.2f}  "
        f"p90 {m['itl']['p90']:.2f}  p99 {m['itl']['p99']:.2f} ms",
        f"latency   {m['e2e_ms']:10.2f} ms{each}   = TTFT + TPOT x {n - 1}",
        f"tokens    {s['total_output_tokens']} in {s['completed']} requests   "
        f"{s['output_throughput']:,.1f} tok/s overall, {s['request_throughput']:,.2f} req/s",
        f"counts    {sum(e['chunks'])} chunks, {e['multi_token_chunks']} of several tokens, "
        f"server usage {_usage(e['usage_tokens'])}{' per request' if k > 1 else ''}; "
        + "; ".join(e["token_counts_meaning"][b] for b in e["token_counts"]),
    ]
    if "goodput" in s:
        limits = ",".join(f"{k}<={v:g}ms" for k, v in s["slo"].items())
        rows.append(f"goodput   {s['good_requests']} of {s['completed']} requests within {limits}: "
                    f"{s['goodput']:,.2f} req/s")
    readings = e.get("server_metrics") or []
    if readings:
        last = readings[-1]
        peak = {key: max(r.get(key, 0.0) for r in readings) for key in last if key != "t_ns"}
        rows.append("/metrics  peak " + "  ".join(
            f"{key} {value:.0%}" if key == "kv_cache_usage" else f"{key} {value:g}"
            for key, value in peak.items()))
    if s["failed"]:
        rows.append(f"failed    {s['failed']} requests got no token")
    if rec.get("stopped"):
        rows.append(f"stopped   early: {e['errors'][0]['message']}")
    width = max(len(r) for r in rows)
    return "\n".join(["-" * width, *rows, "-" * width])


def _usage(counts: list[int | None]) -> str:
    known = [c for c in counts if c is not None]
    if not known:
        return "none"
    return str(known[0]) if len(set(known)) == 1 and len(known) == len(counts) else "+".join(
        "?" if c is None else str(c) for c in counts)


def request_from_args(args: argparse.Namespace) -> Request:
    if args.max_new_tokens < 1:
        raise AttachError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if args.batch < 1:
        raise AttachError(f"--batch must be at least 1, not {args.batch}")
    return Request(prompt=args.prompt, max_new_tokens=args.max_new_tokens, chat=args.chat,
                   sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                   seed=args.seed, ignore_eos=args.ignore_eos)


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if not args.headless:
        return dashboard(args, err)
    try:
        req = request_from_args(args)
        slo = parse_slo(args.slo)
        server = connect(args.url, args.api, args.served_model, args.allow_remote,
                         args.api_key_env, args.timeout)

        def show(i: int, chunk: Chunk) -> None:
            if i == 0:
                out.write(chunk.text)
                out.flush()

        if not args.chat and args.batch == 1:
            out.write(req.prompt)
        rec, errors = measure(server, req, args.batch, slo, args.api_key_env, args.timeout,
                              on_chunk=show if args.batch == 1 else None)
    except AttachError as e:
        return _fail(err, str(e))
    except KeyboardInterrupt:
        return 130
    if args.batch == 1:
        out.write("\n")
    if rec is not None:
        out.write(metrics_table(rec) + "\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rec, f, indent=1)
            out.write(f"record written to {args.json}\n")
    if errors and all(e.kind == "stopped" for e in errors):
        _fail(err, f"interrupted; {len(errors)} requests {errors[0]}")
        return 130
    if errors:
        more = f" (and {len(errors) - 1} more requests failed)" if len(errors) > 1 else ""
        return _fail(err, one_line(str(errors[0])) + more)
    return 0


def dashboard(args: argparse.Namespace, err: TextIO) -> int:
    """The dashboard on the server: connected (and the request checked) before anything is
    drawn, so a server that is not there is one line and exit code 2. The session is recorded
    as the dashboard's are (~/.cache/llmtop/sessions/), for `llmtop replay`."""
    from llmtop.engine import spec
    from llmtop.engine.endpoint.client import EndpointClient
    from llmtop.engine.protocol import Configure, Generate

    try:
        req = request_from_args(args)
        server = connect(args.url, args.api, args.served_model, args.allow_remote,
                         args.api_key_env, args.timeout)
    except AttachError as e:
        return _fail(err, str(e))
    from llmtop.tui.app import LlmtopApp

    client = EndpointClient(server, _key(args.api_key_env), args.timeout)
    client.start()
    try:
        app = LlmtopApp(Configure(model=server.model, device=build.BACKEND, dtype="",
                                  opts={"backend": build.BACKEND}),
                        Generate(prompt=req.prompt, batch=args.batch,
                                 max_new_tokens=req.max_new_tokens, sample=req.sample,
                                 temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                 ignore_eos=req.ignore_eos),
                        theme_name=getattr(args, "theme", None), client=client, chat=req.chat,
                        record=spec.cache_dir() / "sessions" / time.strftime(
                            "attach-%Y%m%d-%H%M%S.jsonl"))
        app.run()
    finally:
        client.close()
    return app.return_code or 0


def _fail(err: TextIO, message: str) -> int:
    err.write(f"llmtop: {message}\n")
    return 2
