"""`llmtop replay FILE`: play a recorded session in the dashboard, or as text (--headless).

The dashboard (llmtop.tui.app.LlmtopApp) receives a `session_log.ReplaySource` as `replay=`;
`--headless` plays the session as text: the tokens at their recorded pace, then each run's
metrics table.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from llmtop import checks
from llmtop.engine.session_log import ReplaySource, SessionDamage


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.speed < 0:
        print("llmtop: --speed must be 0 (no waiting) or more", file=err)
        return 2
    try:
        checks.replay_file(args.file)
        source = ReplaySource(args.file, args.speed)
    except (SessionDamage, checks.CheckError) as e:
        print(f"llmtop: {e}", file=err)
        return 2
    if args.headless:
        return play_text(source, out, err)
    from llmtop.tui.app import LlmtopApp

    app = LlmtopApp(replay=source, theme_name=getattr(args, "theme", None))
    app.run()
    return app.return_code or 0


def play_text(source: ReplaySource, out: TextIO, err: TextIO,
              sleep=time.sleep) -> int:
    """Tokens of request 0 as they came, configuration changes, errors, and metrics tables."""
    from llmtop.headless import metrics_table

    code = 0
    runs = 0
    at_line_start = True

    def line(text: str) -> None:
        nonlocal at_line_start
        if not at_line_start:
            out.write("\n")
        out.write(text + "\n")
        at_line_start = True

    for delay, ev in source.events():
        if delay > 0:
            out.flush()
            sleep(delay)
        kind = ev.get("type")
        if kind == "Config":
            cfg = ev.get("config") or {}
            opts = " ".join(f"{k}={v}" for k, v in (cfg.get("opts") or {}).items())
            line(f"[config] {cfg.get('model', '')} on {cfg.get('device', '')} {opts}"
                 + (f" ({ev['how']})" if ev.get("how") else ""))
        elif kind == "RunStarted":
            line(f"[run {ev.get('run_id')}] batch {ev.get('batch')}, {ev.get('prompt_tokens')} prompt tokens")
            prompts = ev.get("prompts") or []
            if prompts and len(prompts[0]) < 500:
                out.write(prompts[0])
                at_line_start = not prompts[0]
        elif kind == "Token":
            texts = ev.get("texts") or [""]
            out.write(texts[0])
            at_line_start = False
        elif kind == "RunDone":
            runs += 1
            try:
                line(metrics_table(ev["record"]))
            except (KeyError, TypeError, ZeroDivisionError):
                line(f"[run {ev.get('run_id')}] done (its record is incomplete)")
        elif kind == "Error":
            line(f"[error] {ev.get('kind')}: {ev.get('message')}")
        elif kind == "Note":
            line(f"[note] {ev.get('text')}")
        elif kind == "ReplayStopped":
            if not at_line_start:
                out.write("\n")
            out.flush()
            print(f"llmtop: {ev['message']}", file=err)
            code = 1
        elif kind == "ReplayEnd":
            line(f"[replay] end of session: {ev.get('events')} events, {runs} runs")
    out.flush()
    return code
