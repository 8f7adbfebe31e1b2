"""`llmtop` with no subcommand (or `llmtop run` without --headless): the Textual dashboard."""

from __future__ import annotations

import argparse
import sys
import time

from llmtop.engine import spec
from llmtop.settings import UsageError, configure_from_args, engine_threads_from_args, generate_from_args


def main(args: argparse.Namespace) -> int:
    try:
        configure = configure_from_args(args)
        request = generate_from_args(args)
        threads = engine_threads_from_args(args)
    except UsageError as e:
        print(f"llmtop: {e}", file=sys.stderr)
        return 2
    from llmtop.tui import theming
    from llmtop.tui.app import LlmtopApp

    try:
        theming.resolve(args.theme, {**theming.builtin_themes(), **theming.user_themes()[0]})
    except theming.ThemeError as e:
        print(f"llmtop: {e}", file=sys.stderr)
        return 2

    record = args.record or str(spec.cache_dir() / "sessions" /
                                time.strftime("session-%Y%m%d-%H%M%S.jsonl"))
    app = LlmtopApp(configure=configure, request=request, theme_name=args.theme, record=record,
                    engine_threads=threads, chat=False if getattr(args, "raw", False) else None,
                    times_path=spec.cache_dir() / "apply_times.json")
    app.run()
    return app.return_code or 0
