"""From command-line arguments to the engine's Configure and Generate messages.

Checks what can be checked without torch (model path, option names, head divisibility for
--tp is the engine's), so a typo fails in milliseconds with exit code 2.
"""

from __future__ import annotations

import argparse

from llmtop import checks
from llmtop.engine import catalogue, spec, threads
from llmtop.profilers import gpu_set
from llmtop.engine.protocol import Configure, Generate
from llmtop.tui.requests import wants_chat

DEFAULT_PROMPT = "The largest continent is"


class UsageError(ValueError):
    """Bad arguments; the message is one line and the exit code is 2."""


def configure_from_args(args: argparse.Namespace) -> Configure:
    try:
        spec.resolve(args.model)
        opts = catalogue.parse_opts(args.opt, args.preset)
        checks.model_file(args.model)
        checks.device(args.device, args.tp)
    except (spec.ModelSpecError, catalogue.OptionError, checks.CheckError) as e:
        raise UsageError(str(e)) from None
    opts["dtype"] = args.dtype
    why = catalogue.conflicts(opts)
    if why:
        raise UsageError(why)
    if args.tp < 1:
        raise UsageError("--tp must be at least 1")
    gpus = None
    if getattr(args, "gpus", None) is not None:
        try:
            gpus = gpu_set.parse_gpus(args.gpus)
            gpu_set.check_named(gpus, args.tp)
        except gpu_set.GpuSetError as e:
            raise UsageError(str(e)) from None
        if args.device == "cpu":
            raise UsageError("--gpus names GPUs: use --device cuda with it")
    return Configure(model=args.model, device=args.device, dtype=args.dtype, opts=opts, tp=args.tp,
                     gpus=gpus)


def generate_from_args(args: argparse.Namespace, run_id: int = 1) -> Generate:
    if args.batch < 1 or args.max_new_tokens < 1:
        raise UsageError("--batch and --max-new-tokens must be at least 1")
    if args.prompt_len is not None and args.prompt_len < 1:
        raise UsageError("--prompt-len must be at least 1")
    prompt = args.prompt if args.prompt is not None else (
        None if args.prompt_len is not None else DEFAULT_PROMPT)
    try:
        checks.sampling(args.temperature, args.top_p, args.top_k)
        checks.prompt_fits(args.model, args.prompt_len, prompt, args.max_new_tokens)
    except checks.CheckError as e:
        raise UsageError(str(e)) from None
    messages = None
    if prompt is not None and wants_chat(args.model, args.chat, getattr(args, "raw", False)):
        messages, prompt = [{"role": "user", "content": prompt}], None
    return Generate(run_id=run_id, prompt=prompt, messages=messages, prompt_len=args.prompt_len,
                    batch=args.batch, max_new_tokens=args.max_new_tokens, sample=args.sample,
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    seed=args.seed, ignore_eos=args.ignore_eos,
                    profile_steps=max(0, getattr(args, "profile_steps", 0)))


def engine_threads_from_args(args: argparse.Namespace) -> int | None:
    """--engine-threads, else LLMTOP_ENGINE_THREADS; None means automatic (engine/threads.py)."""
    try:
        return threads.parse(threads.requested(getattr(args, "engine_threads", None)))
    except threads.ThreadsError as e:
        raise UsageError(str(e)) from None
