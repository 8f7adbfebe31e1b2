"""`llmtop bench`'s plan: what the sweep measures, from the command line (or a resumed sweep).

The defaults are the study's sweep on a GPU (prompt 2048, batch 1-8 and up, every optimization
the device runs) and a small one on a CPU that finishes in minutes (prompt 128, 32 new tokens,
batch 1-4, the optimizations that need neither a GPU nor minutes of compiling): the device is
known before the engine starts (llmtop.checks), so the plan can be printed up front.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop import attach_options, checks
from llmtop.engine import catalogue, spec as specs
from llmtop.engine.endpoint import BACKEND as ENDPOINT
from llmtop.profilers import gpu_set

SCHEMA = "llmtop.bench/1"
POINTS_FILE = "points.jsonl"
BASELINE = "baseline"

# What the study compares, each on top of the baseline (transformers as it comes: eager
# attention, dynamic cache, no compile). The default sweep runs those the device can run.
STUDY_CONFIGS: list[tuple[str, dict[str, str]]] = [
    (BASELINE, {}),
    ("sdpa", {"attention": "sdpa"}),
    ("flash", {"attention": "flash"}),
    ("mem_efficient", {"attention": "mem_efficient"}),
    ("compile", {"compile": "layers"}),
    ("tunableop", {"gemm": "tunableop"}),
    ("paged", {"kv": "paged"}),
    ("vllm", {"backend": "vllm", "attention": "sdpa"}),
    ("study", dict(catalogue.PRESETS["study"])),
]

DEFAULT_BATCHES = [1, 2, 4, 8]
EXTRA_GPU_BATCHES = [16, 32]    # tried on a GPU by default; an OOM ends the series there
DEFAULT_PROMPT_LEN = 2048
DEFAULT_NEW_TOKENS = 128

# On a CPU, by default: a sweep that finishes in minutes. No compile (minutes per shape on a
# CPU) and nothing that needs a GPU; the prompt and batches a 135M model decodes in seconds.
CPU_CONFIGS = (BASELINE, "sdpa", "flash", "paged")
CPU_BATCHES = [1, 2, 4]
CPU_PROMPT_LEN = 128
CPU_NEW_TOKENS = 32

# a recorded point with one of these statuses is never measured again by --resume
FINAL = ("ok", "oom", "skipped")


class BenchError(Exception):
    """A problem that ends the command with a one-line message (exit code 2)."""


# ---- the plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    model: str = "embedded"
    device: str = "auto"
    dtype: str = "bf16"
    configs: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "opts"}]
    default_configs: bool = True   # the study's set, restricted to what the device runs
    batches: list[int] | None = None  # None: 1,2,4,8 (+16,32 on a GPU)
    prompt_lens: list[int] = field(default_factory=lambda: [DEFAULT_PROMPT_LEN])
    new_tokens: list[int] = field(default_factory=lambda: [DEFAULT_NEW_TOKENS])
    tps: list[int] = field(default_factory=lambda: [1])
    gpus: list[int] | None = None  # --gpus: rank order; a tp=k point runs on the first k
    repeat: int = 3
    warmup: int = 1
    warmup_tokens: int = 16       # new tokens of a warm-up run (all of them for kv=static)
    ignore_eos: bool = True
    seed: int = 0
    endpoint: str | None = None   # bench --endpoint: the server's base URL (llmtop.bench_endpoint)
    api: str | None = None        # the API it speaks, as detected or given
    prompt: str = ""              # the text an endpoint sweep sends (its tokens are the server's)


@dataclass(frozen=True)
class PointSpec:
    config: str
    tp: int
    prompt_len: int
    new_tokens: int
    batch: int

    @property
    def key(self) -> str:
        return point_key(self.config, self.tp, self.prompt_len, self.new_tokens, self.batch)

    def label(self) -> str:
        tp = f" tp={self.tp}" if self.tp > 1 else ""
        return f"{self.config}{tp} b={self.batch} p={self.prompt_len} n={self.new_tokens}"


def point_key(config: str, tp: int, prompt_len: int, new_tokens: int, batch: int) -> str:
    return f"{config}|tp{tp}|p{prompt_len}|n{new_tokens}|b{batch}"


def endpoint_key(new_tokens: int, batch: int) -> str:
    """An endpoint point's key: its prompt is the plan's text, whose token count the server
    gives only once the point is measured, so the key leaves it out (and --resume finds it)."""
    return f"{ENDPOINT}|tp1|n{new_tokens}|b{batch}"


def full_opts(overrides: dict[str, str], dtype: str) -> dict[str, str]:
    """A configuration's every axis: defaults, then the baseline, then its own options."""
    opts = {**catalogue.DEFAULTS, **catalogue.PRESETS["baseline"], **overrides}
    opts["dtype"] = dtype
    return opts


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise BenchError(f"{flag} takes numbers of at least 1, got {text!r}")
    return sorted(set(values))


def _pairs(text: str, what: str) -> dict[str, str]:
    pairs = [p for p in text.replace(" ", "").split(",") if p]
    if not pairs:
        raise BenchError(f"{what} names no AXIS=VALUE pair")
    try:
        opts = catalogue.parse_opts(pairs)
    except catalogue.OptionError as e:
        raise BenchError(f"{what}: {e}") from None
    return {p.partition("=")[0]: opts[p.partition("=")[0]] for p in pairs}


def configs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The user's configurations (--config, --opt, --preset), in order; [] when none named."""
    out: list[dict[str, Any]] = []
    for text in args.config or []:
        name, sep, rest = text.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in "|=,"):
            raise BenchError(f"--config takes NAME:AXIS=VALUE,AXIS=VALUE, got {text!r}")
        out.append({"name": name, "opts": _pairs(rest, f"--config {name}") if rest.strip() else {}})
    for text in args.opt or []:
        opts = _pairs(text, f"--opt {text}")
        out.append({"name": ",".join(f"{k}={v}" for k, v in opts.items()), "opts": opts})
    for name in args.preset or []:
        if name not in catalogue.PRESETS:
            raise BenchError(f"unknown preset {name!r}; choose one of: {', '.join(catalogue.PRESETS)}")
        out.append({"name": name, "opts": dict(catalogue.PRESETS[name])})
    if out and not any(c["name"] == BASELINE for c in out):
        out.insert(0, {"name": BASELINE, "opts": {}})
    names = [c["name"] for c in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise BenchError(f"configuration {dup!r} is named twice")
    return out


def default_configs(device: str) -> list[dict[str, Any]]:
    """The study's configurations; on a CPU the few that run there in seconds."""
    cpu = not device.startswith("cuda")
    return [{"name": n, "opts": dict(o)} for n, o in STUDY_CONFIGS if not cpu or n in CPU_CONFIGS]


def plan_from_args(args: argparse.Namespace, saved: Plan | None = None) -> Plan:
    """The plan the arguments ask for; with `saved` (--resume), the arguments given override
    the saved plan, except model, device and dtype, which must stay what they were."""
    plan = Plan(**asdict(saved)) if saved else Plan()
    for name, flag in (("model", "--model"), ("device", "--device"), ("dtype", "--dtype")):
        value = getattr(args, name, None)
        if value is None:
            continue
        if saved and value != getattr(saved, name):
            raise BenchError(f"the sweep in {args.out} ran with {flag} {getattr(saved, name)}; "
                             f"resume it with the same {flag} (or use another --out)")
        setattr(plan, name, value)
    try:
        specs.resolve(plan.model)
        checks.model_file(plan.model)
    except (specs.ModelSpecError, checks.CheckError) as e:
        raise BenchError(str(e)) from None
    if plan.dtype not in catalogue.AXES["dtype"]:
        raise BenchError(f"unknown dtype {plan.dtype!r}")
    if args.tp is not None:
        plan.tps = int_list(args.tp, "--tp")
    try:
        device = checks.device(plan.device, max(plan.tps))
    except checks.CheckError as e:
        raise BenchError(str(e)) from None
    _configs(plan, args, saved, device)
    if not saved and not device.startswith("cuda"):
        plan.batches, plan.prompt_lens, plan.new_tokens = CPU_BATCHES, [CPU_PROMPT_LEN], [CPU_NEW_TOKENS]
    _sizes(plan, args)
    run_options(plan, args)
    return plan


def _configs(plan: Plan, args: argparse.Namespace, saved: Plan | None, device: str) -> None:
    user = configs_from_args(args)
    if user:
        if saved and not saved.default_configs:
            old = {c["name"]: c["opts"] for c in saved.configs}
            for c in user:
                if c["name"] in old and old[c["name"]] != c["opts"]:
                    raise BenchError(f"configuration {c['name']!r} had options {old[c['name']]} in "
                                     f"this sweep; give the new one another name")
        plan.configs, plan.default_configs = user, False
    elif not saved:
        plan.configs, plan.default_configs = default_configs(device), True
    for c in plan.configs:
        why = catalogue.conflicts(full_opts(c["opts"], plan.dtype))
        if why:
            raise BenchError(f"configuration {c['name']!r}: {why}")


def _sizes(plan: Plan, args: argparse.Namespace) -> None:
    """Batches, prompt lengths, new tokens and the GPUs of the tensor-parallel ranks."""
    if args.batch is not None:
        plan.batches = int_list(args.batch, "--batch")
    if args.prompt_len is not None:
        plan.prompt_lens = int_list(args.prompt_len, "--prompt-len")
    if args.max_new_tokens is not None:
        plan.new_tokens = int_list(args.max_new_tokens, "--max-new-tokens")
    try:
        for p in plan.prompt_lens:
            checks.prompt_fits(plan.model, p, None, max(plan.new_tokens))
    except checks.CheckError as e:
        raise BenchError(str(e)) from None
    if getattr(args, "gpus", None) is not None:
        try:
            plan.gpus = gpu_set.parse_gpus(args.gpus)
            gpu_set.check_named(plan.gpus, len(plan.gpus))   # duplicates
        except gpu_set.GpuSetError as e:
            raise BenchError(str(e)) from None
    if plan.gpus is not None and plan.device == "cpu":
        raise BenchError("--gpus names GPUs: use --device cuda with it")
    if plan.gpus is not None and len(plan.gpus) < max(plan.tps):
        shown = ",".join(map(str, plan.gpus))
        raise BenchError(f"--gpus {shown} names {len(plan.gpus)} GPUs for --tp up to "
                         f"{max(plan.tps)}: a tp=k point runs on the first k named")


def run_options(plan: Plan, args: argparse.Namespace) -> None:
    """Repeats, warm-ups and the request's fixed settings."""
    if args.repeat is not None:
        if args.repeat < 1:
            raise BenchError("--repeat must be at least 1")
        plan.repeat = args.repeat
    if args.warmup is not None:
        if args.warmup < 0:
            raise BenchError("--warmup must be 0 or more")
        plan.warmup = args.warmup
    if args.warmup_tokens is not None:
        if args.warmup_tokens < 1:
            raise BenchError("--warmup-tokens must be at least 1")
        plan.warmup_tokens = args.warmup_tokens
    if args.ignore_eos is not None:
        plan.ignore_eos = args.ignore_eos
    if args.seed is not None:
        plan.seed = args.seed


def batches_for(plan: Plan, device: str) -> list[int]:
    if plan.batches is not None:
        return plan.batches
    return DEFAULT_BATCHES + (EXTRA_GPU_BATCHES if device.startswith("cuda") else [])


def rank_gpus(plan: Plan, tp: int) -> list[int] | None:
    """The GPUs a tp point's ranks run on: the first tp of --gpus, or None (llmtop chooses)."""
    return None if plan.gpus is None else plan.gpus[:tp]



def add_bench_options(p: argparse.ArgumentParser) -> None:
    """`llmtop bench`'s options. Unset ones stay None, so --resume can tell what was given."""
    g = p.add_argument_group("model and device")
    g.add_argument("--model", default=None,
                   help="as for `llmtop run` (default: embedded); e.g. synthetic:llama-2-7b")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N; auto (default) = cuda if present")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default bf16")
    c = p.add_argument_group("configurations (default: baseline + each optimization of the study "
                             "that runs on this device; on a CPU: baseline, sdpa, flash, paged)")
    c.add_argument("--opt", action="append", metavar="AXIS=VALUE[,AXIS=VALUE]",
                   help="a configuration: the baseline plus these options (repeatable: one "
                        "configuration each), e.g. --opt attention=flash --opt compile=layers")
    c.add_argument("--config", action="append", metavar="NAME:AXIS=VALUE,...",
                   help="a named configuration on top of the baseline, e.g. "
                        "'static:kv=static,compile=full' (repeatable)")
    c.add_argument("--preset", action="append", metavar="NAME",
                   help=f"a preset as one configuration ({', '.join(catalogue.PRESETS)}; repeatable)")
    s = p.add_argument_group("sweep")
    s.add_argument("--batch", default=None, metavar="1,2,4,8",
                   help="batch sizes (default 1,2,4,8, and 16,32 on a GPU: an OOM ends the series; "
                        "1,2,4 on a CPU)")
    s.add_argument("--prompt-len", default=None, metavar="2048", help="prompt lengths (default 2048; 128 on a CPU)")
    s.add_argument("--max-new-tokens", default=None, metavar="128", help="new tokens (default 128; 32 on a CPU)")
    s.add_argument("--tp", default=None, metavar="1,2", help="tensor-parallel sizes (default 1)")
    s.add_argument("--gpus", default=None, metavar="0,1",
                   help="the ranks' GPUs in rank order, numbered as nvidia-smi numbers them; a "
                        "tp=k point runs on the first k (default: llmtop picks the best-linked set)")
    s.add_argument("--repeat", type=int, default=None, metavar="N", help="measured runs per point (default 3)")
    s.add_argument("--warmup", type=int, default=None, metavar="N", help="warm-up runs per point (default 1)")
    s.add_argument("--warmup-tokens", type=int, default=None, metavar="N",
                   help="new tokens of each warm-up run (default 16; the full count with kv=static)")
    s.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="always generate every new token (default: on)")
    s.add_argument("--seed", type=int, default=None)
    e = p.add_argument_group("a running server instead of llmtop's engine")
    e.add_argument("--endpoint", metavar="URL", default=None,
                   help="measure this server (vLLM, SGLang, TGI, llama.cpp, transformers serve): "
                        "a point's batch = that many concurrent streamed requests (default 1,2,4,8; "
                        f"{DEFAULT_NEW_TOKENS} new tokens)")
    e.add_argument("--prompt", default=None, help="with --endpoint: the prompt text (default: llmtop's)")
    attach_options.add_endpoint_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="where points.jsonl and the reports go (default: ./bench-DATE-TIME)")
    o.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out DIR; points already measured are kept")
    o.add_argument("--report-only", action="store_true",
                   help="write the reports from --out DIR's points.jsonl without measuring")
    o.add_argument("--no-telemetry", action="store_true", help="do not sample GPU power")
    o.add_argument("--no-plots", action="store_true", help="no terminal charts on stdout")
    o.add_argument("--stall-timeout", type=float, default=900.0, metavar="S",
                   help="restart the engine after S seconds without a word from it (default 900)")

