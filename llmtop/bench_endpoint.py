"""`llmtop bench --endpoint URL`: the sweep against a running inference server.

A point's batch is that many concurrent streamed requests of the same prompt (vLLM's benchmark's
--max-concurrency); each is measured by llmtop.attach (stamps on arrival here, so the network
and the server's streaming interval are in every figure). The points go to the same
points.jsonl as an engine sweep, so the reports, --resume and --report-only are bench's own.

The prompt is text: its token count is the server's, known only once a point is measured, so a
point's key leaves it out (bench_plan.endpoint_key) and --resume finds the points it measured.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from llmtop import attach
from llmtop.bench_plan import (DEFAULT_BATCHES, DEFAULT_NEW_TOKENS, ENDPOINT, POINTS_FILE,
                               SCHEMA, BenchError, Plan, PointSpec, int_list, run_options,
                               endpoint_key)
from llmtop.bench_points import point_line
from llmtop.bench_store import PointStore, done_keys
from llmtop.engine import record as records
from llmtop.engine.endpoint.build import STAMPS
from llmtop.engine.endpoint.stream import Request, Server
from llmtop.settings import DEFAULT_PROMPT

ENGINE_ONLY = ("model", "device", "dtype", "opt", "config", "preset", "tp", "gpus", "prompt_len")


def connect(args: argparse.Namespace, saved: Plan | None) -> tuple[Plan, Server]:
    """The plan of an endpoint sweep and the server it measures (one line on any fault).
    Resumed, the URL, API and served model are the saved plan's."""
    given = [f"--{a.replace('_', '-')}" for a in ENGINE_ONLY if getattr(args, a, None) is not None]
    if given:
        raise BenchError(f"{', '.join(given)} configure llmtop's own engine; with --endpoint the "
                         f"server runs as it was started (use --prompt for the prompt text)")
    if saved and not saved.endpoint:
        raise BenchError(f"the sweep in {args.out} measured llmtop's engine, not a server; "
                         f"use another --out for --endpoint")
    url = args.endpoint or saved.endpoint
    api = (saved.api if saved else None) or args.api
    model = (saved.model if saved else None) or args.served_model
    try:
        server = attach.connect(url, api, model, args.allow_remote, args.api_key_env, args.timeout)
    except attach.AttachError as e:
        raise BenchError(str(e)) from None
    if saved and server.url != saved.endpoint:
        raise BenchError(f"the sweep in {args.out} measured {saved.endpoint}; resume it with that "
                         f"--endpoint (or use another --out)")
    plan = Plan(**asdict(saved)) if saved else Plan(
        model=server.model, device=ENDPOINT, dtype="", prompt_lens=[],
        configs=[{"name": ENDPOINT, "opts": {"backend": ENDPOINT}}], default_configs=False,
        batches=list(DEFAULT_BATCHES), new_tokens=[DEFAULT_NEW_TOKENS],
        endpoint=server.url, api=server.api, prompt=DEFAULT_PROMPT)
    if args.prompt is not None:
        if saved and args.prompt != saved.prompt:
            raise BenchError(f"the sweep in {args.out} sent another prompt; resume it without "
                             f"--prompt (or use another --out)")
        plan.prompt = args.prompt
    if args.batch is not None:
        plan.batches = int_list(args.batch, "--batch")
    if args.max_new_tokens is not None:
        plan.new_tokens = int_list(args.max_new_tokens, "--max-new-tokens")
    if not saved and args.ignore_eos is None:
        plan.ignore_eos = server.api != "tgi"   # TGI's /generate_stream cannot be asked
    run_options(plan, args)
    if plan.ignore_eos and server.api == "tgi":
        raise BenchError("TGI's /generate_stream has no ignore_eos: add --no-ignore-eos")
    return plan, server


def describe(plan: Plan, server: Server) -> str:
    """The plan in a few lines, printed before anything is sent."""
    points = len(plan.batches or []) * len(plan.new_tokens)
    join = lambda xs: ",".join(map(str, xs))  # noqa: E731
    eos = "always every new token (ignore_eos)" if plan.ignore_eos else "until the server stops"
    return "\n".join([
        f"llmtop bench: plan: {server.kind} at {server.url} (api {server.api}), model {server.model}",
        f"  concurrent requests {join(plan.batches or [])}; new tokens {join(plan.new_tokens)}, "
        f"{eos}; prompt {plan.prompt[:40]!r}{'...' if len(plan.prompt) > 40 else ''}",
        f"  {points} points, each {plan.warmup} warm-up + {plan.repeat} measured batches; "
        f"stamps on arrival here (the network included)",
    ])


def run_sweep(plan: Plan, server: Server, out: Path, records_: list[dict[str, Any]],
              err: TextIO, args: argparse.Namespace) -> int:
    """Measures every point of `plan` not already final in `records_`; returns the exit code."""
    from llmtop.bench_sweep import ignore_sigint, msg

    done = done_keys(records_)
    todo = [(n, b) for n in plan.new_tokens for b in plan.batches or []
            if endpoint_key(n, b) not in done]
    store = PointStore(out / POINTS_FILE)
    store.append({"type": "plan", "schema": SCHEMA, "unix": time.time(), "plan": asdict(plan),
                  "resumed": bool(records_)})
    if not any(r["type"] == "meta" for r in records_):
        store.append(_meta(server))
    total = len(plan.batches or []) * len(plan.new_tokens)
    if len(todo) < total:
        msg(err, f"llmtop bench: resuming: {total - len(todo)} of {total} points already "
                 f"measured, {len(todo)} to go")
    t0 = time.monotonic()
    try:
        for i, (n, b) in enumerate(todo, 1):
            req = Request(plan.prompt, n, ignore_eos=plan.ignore_eos, seed=plan.seed)
            try:
                point = attach.bench_point(server, req, b, plan.repeat, plan.warmup,
                                           args.api_key_env, args.timeout)
            except attach.AttachError as e:
                raise BenchError(str(e)) from None
            store.append(point)
            spec = PointSpec(ENDPOINT, 1, point["prompt_len"], n, b)
            text = point_line(point) if point["status"] == "ok" else f"ERROR: {point['error']}"
            msg(err, f"[{i}/{len(todo)}] {spec.label()}: {text}  "
                     f"(elapsed {time.monotonic() - t0:.0f}s)")
    except KeyboardInterrupt:
        ignore_sigint()   # `timeout -s INT` signals the group too: the reports still get written
        msg(err, f"llmtop bench: interrupted; what was measured is in {out / POINTS_FILE}; "
                 f"continue with: llmtop bench --out {out} --resume")
        return 130
    finally:
        store.close()
    return 0


def _meta(server: Server) -> dict[str, Any]:
    """What the reports say of the model and of where it ran: the server, as it described
    itself, and this host, where the stamps were taken."""
    return {"type": "meta", "unix": time.time(),
            "model": {"name": server.model, "source": server.url, "server": server.kind,
                      "device": ENDPOINT, "synthetic": False},
            "endpoint": {"url": server.url, "api": server.api, "server": server.kind,
                         "stamps": STAMPS, "server_info": server.info},
            "machine": records.machine(probe_torch=False),
            "versions": records.versions(probe_torch=False),
            "telemetry": {"available": False, "reason": "the server's GPUs are not sampled by bench"}}
