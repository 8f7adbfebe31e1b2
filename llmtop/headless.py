"""`llmtop run --headless`: stream the text to stdout, then a metrics table (and --json)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from llmtop import checks
from llmtop.engine.metrics import BUSY_LOAD
from llmtop.engine.protocol import ErrorKind, Status, StepProfile, Token
from llmtop.engine.session import EngineSession
from llmtop.settings import UsageError, configure_from_args, engine_threads_from_args, generate_from_args
from llmtop.tui.analysis import bar


# silence from the engine this long ends the run as stalled (loading and compiling send a
# heartbeat every 0.5 s; a CPU recompile inside a run can take minutes)
STALL_S = 900.0


def _num(value: Any, spec: str, unit: str = "") -> str:
    """A figure, or n/a where there is none (a 1-token run's TPOT, a beaten floor): no nan."""
    if value is None or value != value:
        return "n/a"
    return f"{value:{spec}}{unit}"


def _guard_row(g: dict[str, Any]) -> str | None:
    status = g.get("status")
    if status not in ("identical", "equivalent", "diverged"):
        return None
    dist = ("" if g.get("logit_distance") is None
            else f", max |Δlogit| {g['logit_distance']:.3g}")
    if status == "identical":
        return f"guard     identical to {g['baseline']} over {g['tokens']} tokens{dist}"
    if status == "equivalent":
        return (f"guard     equivalent to {g['baseline']} within dtype rounding: token "
                f"{g['diverged_at']} flipped on a margin {_num(g.get('margin'), '.3g')} "
                f"<= tolerance {_num(g.get('tolerance'), '.3g')}{dist}")
    at = g.get("beyond_at", g.get("diverged_at"))
    why = (f" (margin beyond tolerance {g['tolerance']:.3g} by token {at})"
           if g.get("tolerance") is not None else "")
    return f"guard     DIVERGED from {g['baseline']} at token {g['diverged_at']}{why}{dist}"


def metrics_table(record: dict[str, Any]) -> str:
    """The run's figures as aligned text; identical to what the record holds."""
    m, model, cfg = record["metrics"], record["model"], record["config"]
    opts = " ".join(f"{k}={v}" for k, v in cfg["opts"].items() if k != "dtype")
    n, batch = m["n_tokens"], m["batch"]
    decoded = n > 1
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
    itl = m["itl"]
    rows += [
        f"TTFT      {m['ttft_ms']:10.2f} ms   prefill {_num(m['prefill_tokens_per_s'], ',.0f')} tok/s "
        f"({m['prompt_tokens']} prompt tokens x batch {batch})",
        (f"TPOT      {m['tpot_ms']:10.2f} ms   decode {_num(m['decode_tokens_per_s'], ',.1f')} tok/s"
         if decoded else "TPOT             n/a      one token: no decode step"),
    ]
    if m.get("stalls"):
        rows.append(f"steady TPOT {_num(m.get('tpot_steady_ms'), '8.2f', ' ms')}   without "
                    f"{m['stalls']} stall{'s' if m['stalls'] > 1 else ''} "
                    f"({m.get('stall_ms', 0) / 1e3:.1f} s: compile, capture or tuning)")
    rows += [
        (f"ITL       mean {itl['mean']:.2f}  p50 {itl['p50']:.2f}  "
         f"p90 {itl['p90']:.2f}  p99 {itl['p99']:.2f} ms" if decoded else "ITL       n/a"),
        f"latency   {m['e2e_ms']:10.2f} ms   = TTFT + TPOT x {n - 1}",
        f"tokens    {n} x batch {batch}   {_num(m['tokens_per_s'], ',.1f')} tok/s overall",
    ]
    roof = record.get("roofline")
    if roof:
        ceil = record.get("ceilings") or {}
        beaten = roof.get("beaten") or []

        def pct(name: str) -> str:
            return ("above its floor (the ceiling under it was measured low)" if name in beaten
                    else f"{_num(roof[name + '_pct'], '.0f', '%')} of the "
                         f"{roof[name + '_floor_ms']:.2f} ms floor")

        decode = (f"decode {pct('decode')} ({_num(roof['achieved_gb_s'], '.0f')} GB/s of "
                  f"{ceil.get('mem_bw_gb_s', 0):.0f})" if decoded else "decode n/a (one token)")
        rows.append(f"roofline  {decode}, prefill {pct('prefill')}")
        if ceil.get("remeasured"):
            rows.append(f"ceilings  re-measured: {ceil['remeasured']}")
        elif ceil.get("load", 0) > BUSY_LOAD:
            rows.append(f"ceilings  measured under load {ceil['load']:.1f} per CPU: the floors may "
                        "read low (LLMTOP_REMEASURE=1 measures again)")
    guard = _guard_row(record.get("guard") or {})
    if guard:
        rows.append(guard)
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
        extra = f" {bar(event.progress, 20)} {event.progress:.0%}" if event.progress is not None else ""
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
        checks.output_file(args.json)
    except (UsageError, checks.CheckError) as e:
        return _fail(str(e), 2)

    def progress(kind: str, ev: Any) -> None:
        if kind == "status":
            _progress(ev, err)

    def token(ev: Token) -> None:
        out.write(ev.texts[0])
        out.flush()

    session = EngineSession(None, STALL_S, on_progress=progress, threads=threads,
                            stop_on_interrupt=True)
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
            out.write(checks.save_record(record, args.json) + "\n")
        return 0 if not record.get("stopped") else 1
    finally:
        session.close()
