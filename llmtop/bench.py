"""`llmtop bench`: the study's sweep, configurations x batch sizes x prompt lengths x new tokens.

The jobs live in their own modules: the plan and its options (bench_plan), the sweep through one
engine process (bench_sweep), the results file that makes it resumable (bench_store), one
point's figures (bench_points), GPU telemetry (bench_telemetry), the reports (bench_report) and
charts (bench_charts). At the end (or on Ctrl-C) the reports are written from the JSONL:
bench.json, bench.csv, report.md (+ PNG charts), and a table and terminal charts on stdout.

Imports no torch: the engine process does the work.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from llmtop.bench_plan import (POINTS_FILE, BenchError, Plan, add_bench_options, batches_for,
                               plan_from_args)
from llmtop.bench_points import resummarize
from llmtop.bench_store import read_lines, saved_plan
from llmtop.bench_sweep import msg, run_sweep

if TYPE_CHECKING:   # the HTTP client is imported only by a sweep that uses it
    from llmtop.engine.endpoint.stream import Server

__all__ = ["add_bench_options", "main"]


def _prepare(args: argparse.Namespace, err: TextIO
             ) -> tuple[Path, list[dict[str, Any]], Plan | None, Server | None]:
    """The sweep's folder, what it holds, the plan (None for --report-only) and, with
    --endpoint, the server it measures (None for llmtop's engine)."""
    if (args.resume or args.report_only) and not args.out:
        raise BenchError("--resume and --report-only need --out DIR (the sweep's folder)")
    folder = Path(args.out or time.strftime("bench-%Y%m%d-%H%M%S"))
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"--out {folder} is a file, not a folder")
    points_path = folder / POINTS_FILE
    records, note = read_lines(points_path)
    if note:
        msg(err, f"llmtop bench: {note}")
    if args.report_only:
        if not any(r["type"] == "point" for r in records):
            raise BenchError(f"{points_path} holds no measured point")
        return folder, records, None, None
    if records and not args.resume:
        raise BenchError(f"{folder} already holds a sweep: add --resume to continue it, "
                         f"or choose another --out")
    if args.resume and not records:
        where = "does not exist" if not folder.exists() else f"holds no sweep ({POINTS_FILE} is missing or empty)"
        raise BenchError(f"nothing to resume: {folder} {where}; start a sweep there without --resume")
    saved = saved_plan(records) if args.resume else None
    server = None
    if args.endpoint or (saved and saved.endpoint):
        from llmtop import bench_endpoint

        plan, server = bench_endpoint.connect(args, saved)
    else:
        plan = plan_from_args(args, saved)
    if args.stall_timeout <= 0:
        raise BenchError("--stall-timeout must be positive")
    try:   # before anything is measured: a sweep must have somewhere to keep its points
        folder.mkdir(parents=True, exist_ok=True)
        (folder / POINTS_FILE).open("a").close()
    except OSError as e:
        raise BenchError(f"--out {folder}: cannot write there ({e.strerror or e})") from None
    return folder, records, plan, server


def describe(plan: Plan, device: str) -> str:
    """The plan in a few lines, printed before anything starts."""
    batches = batches_for(plan, device)
    points = len(plan.configs) * len(plan.tps) * len(plan.prompt_lens) * len(plan.new_tokens) * len(batches)
    names = ", ".join(c["name"] for c in plan.configs)
    steps = plan.warmup * min(max(plan.new_tokens), plan.warmup_tokens) + plan.repeat * max(plan.new_tokens)
    join = lambda xs: ",".join(map(str, xs))  # noqa: E731
    more = " (an out-of-memory batch ends its series)" if plan.batches is None else ""
    return "\n".join([
        f"llmtop bench: plan: {plan.model} ({plan.dtype}) on {device}",
        f"  configurations: {names}" + (" (those this device runs)" if plan.default_configs else ""),
        f"  batch {join(batches)}{more}; prompt {join(plan.prompt_lens)}; new tokens "
        f"{join(plan.new_tokens)}; tp {join(plan.tps)}",
        f"  {'up to ' if plan.default_configs else ''}{points} points, each {plan.warmup} warm-up + {plan.repeat} measured runs "
        f"(up to {steps} decode steps a point); an estimate follows the first point",
    ])


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        folder, records, plan, server = _prepare(args, err)
        if plan is None:
            return _report(folder, records, out, args.no_plots)
        if server is not None:
            from llmtop import bench_endpoint

            msg(err, bench_endpoint.describe(plan, server))
        else:
            from llmtop import checks

            msg(err, describe(plan, checks.device(plan.device, max(plan.tps))))
    except BenchError as e:
        print(f"llmtop: {e}", file=err)
        return 2
    handler = signal.getsignal(signal.SIGINT)
    try:
        if server is not None:
            code = bench_endpoint.run_sweep(plan, server, folder, records, err, args)
        else:
            code = run_sweep(plan, folder, records, err, args.stall_timeout, not args.no_telemetry)
        records, _ = read_lines(folder / POINTS_FILE)
        if any(r["type"] == "point" for r in records):
            _report(folder, records, out, args.no_plots)
        return code
    except BenchError as e:
        print(f"llmtop: {e}", file=err)
        return 1
    finally:
        try:
            signal.signal(signal.SIGINT, handler)
        except (ValueError, TypeError):
            pass


def _report(folder: Path, records: list[dict[str, Any]], out: TextIO, no_plots: bool) -> int:
    from llmtop import bench_charts, bench_report

    results = bench_report.build_results(resummarize(records))
    paths = bench_report.write_all(results, folder)
    out.write(bench_report.table(results) + "\n")
    if not no_plots:
        for chart in bench_charts.terminal_charts(results):
            out.write(chart + "\n")
    out.write("written: " + ", ".join(str(p) for p in paths) + "\n")
    return 0
