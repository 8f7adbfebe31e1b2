"""`llmtop run --headless`: stream the text to stdout, then a metrics table (and --json)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from llmtop.engine.protocol import ErrorKind, Status, StepProfile, Token
from llmtop.engine.session import EngineSession
from llmtop.settings import UsageError, configure_from_args, engine_threads_from_args, generate_from_args


# silence from the engine this long ends the run as stalled (loading and compiling send a
# heartbeat every 0.5 s; a CPU recompile inside a run can take minutes)
STALL_S = 900.0


def metrics_table(record: dict[str, Any]) -> str:
    """The run's figures as aligned text; identical to what the record holds."""
    m, model, cfg = record["metrics"], record["model"], record["config"]
    opts = " ".join(f"{k}={v}" for k, v in cfg["opts"].items() if k != "dtype")
    n, batch = m["n_tokens"], m["batch"]
    synthetic = " (synthetic weights)" if model.get("synthetic") else ""
    rows = [
        f"model     {model['name']}{synthetic}  {model['params'] / 1e6:.1f} M params  "
        f"{model['dtype']} on {model['device']}",
        f"config    {opts}",
    ]
    if model.get("tp", 1) > 1 or model.get("gpus"):
        gpus = model.get("gpus") or []
        which = f"GPUs {','.join(map(str, gpus))}, " if gpus else ""
        rows.append(f"ranks     tp {model.get('tp', 1)} on {', '.join(model.get('devices') or [])}"
                    + (f" ({which}{model['gpu_choice']})" if model.get("gpu_choice") else ""))
    rows += [
        f"TTFT      {m['ttft_ms']:10.2f} ms   prefill {m['prefill_tokens_per_s']:,.0f} tok/s "
        f"({m['prompt_tokens']} prompt tokens x batch {batch})",
        f"TPOT      {m['tpot_ms']:10.2f} ms   decode {m['decode_tokens_per_s']:,.1f} tok/s",
        *([f"stalls    {m['stalls']} marked inside the run ({m['stall_ms']:.0f} ms): steady TPOT "
           f"{m['tpot_steady_ms']:.2f} ms without them"] if m.get("stalls") else []),
        f"ITL       mean {m['itl']['mean']:.2f}  p50 {m['itl']['p50']:.2f}  "
        f"p90 {m['itl']['p90']:.2f}  p99 {m['itl']['p99']:.2f} ms",
        f"latency   {m['e2e_ms']:10.2f} ms   = TTFT + TPOT x {n - 1}",
        f"tokens    {n} x batch {batch}   {m['tokens_per_s']:,.1f} tok/s overall",
    ]
    roof = record.get("roofline")
    if roof:
        rows.append(f"roofline  decode {roof['decode_pct']:.0f}% of the {roof['decode_floor_ms']:.2f} ms floor "
                    f"({roof['achieved_gb_s']:.0f} GB/s of {record['ceilings']['mem_bw_gb_s']:.0f}), "
                    f"prefill {roof['prefill_pct']:.0f}% of the {roof['prefill_floor_ms']:.2f} ms floor")
    if record.get("stopped"):
        rows.append(f"stopped   early: {record['stopped']}")
    width = max(len(r) for r in rows)
    return "\n".join(["-" * width, *rows, "-" * width])


def profile_table(p: StepProfile) -> str:
    """A step profile as text: where each step's time goes, and the kernels that take it."""
    unit = "GPU" if p.device == "gpu" else "CPU (in ATen ops)"
    busy_pct = 100 * p.busy_ms / p.step_ms if p.step_ms else 0.0
    rows = [f"step profile ({p.steps} steps incl. prefill): {p.step_ms:.2f} ms/step, {unit} busy "
            f"{p.busy_ms:.2f} ms ({busy_pct:.0f}%), idle {p.idle_ms:.2f} ms",
            f"{'kernel':<60} {'calls':>6} {'ms':>9} {'%':>6}"]
    if getattr(p, "tp", 1) > 1:
        rows.insert(1, f"collectives: {p.collective_ms:.2f} ms/decode step ({p.collective_pct:.0f}% of each "
                       f"decode step) in {p.collective_calls} all-reduce / all-gather calls over {p.tp} ranks")
    for k in p.top_kernels[:10]:
        rows.append(f"{k['name'][:60]:<60} {k['calls']:>6} {k['device_ms']:>9.2f} {k['pct']:>5.1f}%")
    if p.device == "gpu" and p.top_host_ops:
        rows.append(f"{'host op (own CPU time: launches, dispatch, plan building)':<60} {'calls':>6} "
                    f"{'ms':>9} {'%':>6}")
        for k in p.top_host_ops[:8]:
            rows.append(f"{k['name'][:60]:<60} {k['calls']:>6} {k['cpu_ms']:>9.2f} {k['pct']:>5.1f}%")
    rows.append(f"trace: {p.trace_path} (open in https://ui.perfetto.dev)")
    return "\n".join(rows)


def _fail(message: str, code: int) -> int:
    print(f"llmtop: {message}", file=sys.stderr)
    return code


def _progress(event: Status, err: TextIO) -> None:
    if not err.isatty():
        return
    if event.phase in ("loading", "compiling", "starting", "capturing", "tuning", "warming"):
        extra = f" {event.progress:.0%}" if event.progress is not None else ""
        extra += f" {event.elapsed_s:.0f}s" if event.elapsed_s else ""
        err.write(f"\r\033[K[{event.phase}] {event.detail}{extra}")
        err.flush()


def _clear(err: TextIO) -> None:
    if err.isatty():
        err.write("\r\033[K")


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        configure = configure_from_args(args)
        request = generate_from_args(args)
        threads = engine_threads_from_args(args)
    except UsageError as e:
        return _fail(str(e), 2)

    def progress(kind: str, ev: Any) -> None:
        if kind == "status":
            _progress(ev, err)

    def token(ev: Token) -> None:
        out.write(ev.texts[0])
        out.flush()

    session = EngineSession(None, STALL_S, on_progress=progress, threads=threads)
    session.start()
    try:
        applied = session.configure(configure)
        _clear(err)
        if applied.error_kind:
            return _fail(applied.message, 2 if applied.error_kind == ErrorKind.CONFIG else 1)
        if request.prompt is not None and request.batch == 1:
            out.write(request.prompt)
        outcome = session.generate(request, on_token=token)
        record = outcome.record
        if record is None:
            return _fail(outcome.message, 2 if outcome.error_kind == ErrorKind.BAD_REQUEST else 1)
        if record.get("stopped") == "stop":
            out.write("\n")
        if outcome.error_kind:   # e.g. out of memory mid-run: the tokens before it are measured
            print(f"\nllmtop: {outcome.message}", file=sys.stderr)
        if outcome.profile:
            record["step_profile"] = outcome.profile
        out.write("\n" + metrics_table(record) + "\n")
        if outcome.profile:
            out.write(profile_table(StepProfile(**outcome.profile)) + "\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)
            out.write(f"record written to {args.json}\n")
        return 0 if not record.get("stopped") else 1
    finally:
        session.close()
