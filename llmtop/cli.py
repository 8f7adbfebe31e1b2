"""`llmtop` command line: argument parsing and dispatch. Imports no torch at module level."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from llmtop import __version__
from llmtop.engine import catalogue
from llmtop.engine.threads import ThreadsError

EPILOG = """examples:
  llmtop                                         the dashboard on the embedded SmolLM2-135M
  llmtop run --headless --prompt "The largest continent is" --max-new-tokens 64
  llmtop run --headless --model synthetic:llama-2-7b --device cuda --batch 8 --prompt-len 2048
  llmtop run --headless --opt attention=eager --opt kv=static --json run.json
  llmtop info                                    what runs on this machine, and why not
"""


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options every command that generates shares (run, dashboard, bench)."""
    g = p.add_argument_group("model and device")
    g.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, default), a local Hugging Face "
                        "directory, a .gguf file, a hub id already in the local cache, or "
                        "synthetic:llama-2-7b | synthetic:llama-2-70b | synthetic:tiny "
                        "(random weights, real timings)")
    g.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N (ROCm GPUs are cuda too); auto = cuda if present")
    g.add_argument("--dtype", default=catalogue.DEFAULTS["dtype"], choices=catalogue.AXES["dtype"])
    g.add_argument("--opt", action="append", default=[], metavar="AXIS=VALUE[,AXIS=VALUE]",
                   help="optimizations, e.g. attention=sdpa, kv=static,compile=full, "
                        "gemm=tunableop (repeatable; `llmtop info` lists them all)")
    g.add_argument("--preset", choices=list(catalogue.PRESETS),
                   help="a named set of optimizations, applied before --opt: " + "; ".join(
                       f"{name}, {why}" for name, why in catalogue.PRESET_HELP.items()))
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs (default 1)")
    g.add_argument("--gpus", default=None, metavar="0,1",
                   help="the GPUs of the --tp ranks, rank 0 first, numbered as nvidia-smi and the "
                        "GPU panel number them (default: llmtop picks the best-linked set)")
    g.add_argument("--engine-threads", default=None, metavar="N|auto",
                   help="CPU threads for the engine's torch ops (default auto, or the "
                        "LLMTOP_ENGINE_THREADS variable): torch's default headless; beside the "
                        "dashboard one core fewer when torch would take every core, so the UI "
                        "does not stall the engine's OpenMP team")
    r = p.add_argument_group("request")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (default: the study's 'The largest continent is')")
    src.add_argument("--prompt-len", type=int, metavar="N",
                     help="a synthetic prompt of N random tokens (for sweeps and synthetic models)")
    r.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the model's chat template")
    r.add_argument("--raw", action="store_true", help="send the prompt as raw text, not through the chat template (the default for models that have one)")
    r.add_argument("--batch", type=int, default=1, help="requests per step (default 1)")
    r.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    r.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens")
    r.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    r.add_argument("--temperature", type=float, default=0.7)
    r.add_argument("--top-p", type=float, default=0.9)
    r.add_argument("--top-k", type=int, default=0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--profile-steps", type=int, default=0, metavar="N",
                   help="profile the prefill and N decode steps (torch.profiler): top kernels, "
                        "device busy vs idle per step, and a Perfetto trace file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmtop", description="Live LLM inference profiling in the terminal: tokens, "
        "TTFT/TPOT, GPU telemetry and optimizations you toggle while it runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"llmtop {__version__}")
    add_run_options(p)
    p.add_argument("--theme", default=None, help="dashboard theme (see the themes/ folder)")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="session file the dashboard records to (default: a new one under "
                        "~/.cache/llmtop/sessions/); play it with `llmtop replay FILE`")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="generate: the dashboard, or text and a metrics table with --headless",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(run)
    run.add_argument("--headless", action="store_true", help="no dashboard: text to stdout, then metrics")
    run.add_argument("--json", metavar="FILE", help="write the full run record (every token stamp) here")
    run.add_argument("--theme", default=None, help="dashboard theme")
    run.add_argument("--record", metavar="FILE", default=None, help="dashboard session file")

    info = sub.add_parser("info", help="devices, versions, telemetry, and every optimization's availability")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--device", default="auto")

    from llmtop.bench import add_bench_options

    bench = sub.add_parser(
        "bench", help="sweep configurations x batch sizes x prompt lengths: TTFT/TPOT reports",
        description="The study's sweep: baseline vs each optimization, over batch sizes and prompt "
                    "lengths, with warm-up and repeats. Writes DIR/points.jsonl as it goes "
                    "(--resume continues it), then bench.json, bench.csv, report.md and PNG charts.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_options(bench)

    compare = sub.add_parser("compare", help="differences and ratios between two run records or bench results")
    compare.add_argument("a", metavar="A", help="a run record (--json), bench.json, points.jsonl or bench folder")
    compare.add_argument("b", metavar="B", help="the same kind of file, to compare with A")
    compare.add_argument("--json", action="store_true", help="machine-readable output")

    replay = sub.add_parser("replay", help="play a recorded session (JSONL) in the dashboard")
    replay.add_argument("file", metavar="FILE", help="a session file recorded by the dashboard")
    replay.add_argument("--speed", type=float, default=1.0,
                        help="playback speed: 1 real time (default), 4 four times faster, 0 at once")
    replay.add_argument("--headless", action="store_true",
                        help="no dashboard: print the tokens and each run's metrics as they replay")
    replay.add_argument("--theme", default=None, help="dashboard theme")

    from llmtop.attach_options import add_attach_options

    attach = sub.add_parser(
        "attach", help="profile a running inference server (vLLM, SGLang, TGI, llama.cpp, "
                       "transformers serve) token by token",
        epilog=ATTACH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_attach_options(attach)

    top = sub.add_parser("top", help="GPU and host telemetry as text lines for scripts (like "
                                      "nvidia-smi dmon); host lines alone on a machine without a GPU")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    top.add_argument("--count", type=int, default=None, help="stop after N samples")
    return p


BENCH_EPILOG = """examples:
  llmtop bench --model synthetic:tiny --device cpu --batch 1,2 --prompt-len 64 --max-new-tokens 16 --out b1
  llmtop bench --model synthetic:llama-2-7b --device cuda --out h100      the study's sweep
  llmtop bench --opt attention=flash --opt compile=layers --config 'static:kv=static,compile=full'
  llmtop bench --out h100 --resume                                      continue an interrupted sweep
  llmtop bench --out h100 --report-only                                 rebuild the reports
  llmtop bench --endpoint http://127.0.0.1:8000 --batch 1,2,4,8 --out srv  a running server:
                                            batch = concurrent streamed requests
"""


ATTACH_EPILOG = """examples:
  llmtop attach http://127.0.0.1:8000                                      the dashboard
  llmtop attach http://127.0.0.1:8000 --headless --max-new-tokens 128      vLLM, SGLang, ...
  llmtop attach http://127.0.0.1:8080 --headless --api tgi                 TGI's /generate_stream
  llmtop attach http://127.0.0.1:8000 --headless --batch 8 --slo ttft=500,tpot=50 --json a.json
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            from llmtop import info

            return info.main(args)
        if args.command == "bench":
            from llmtop import bench

            return bench.main(args)
        if args.command == "compare":
            from llmtop import compare

            return compare.main(args)
        if args.command == "top":
            from llmtop.profilers import report

            return report.run_top(args.interval, args.count)
        if args.command == "attach":
            from llmtop import attach

            return attach.main(args)
        if args.command == "replay":
            from llmtop import replay

            return replay.main(args)
        if args.command == "run" and args.headless:
            from llmtop import headless

            return headless.main(args)
        from llmtop import dashboard

        return dashboard.main(args)
    except KeyboardInterrupt:
        return 130
    except ThreadsError as e:  # a bad LLMTOP_ENGINE_THREADS met by a command without the flag
        print(f"llmtop: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
