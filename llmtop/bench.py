"""`llmtop bench`: the study's sweep, configurations x batch sizes x prompt lengths x new tokens.

One engine process (the dashboard's engine, through EngineClient) is reconfigured between
configurations; every point gets warm-up runs, then --repeat measured runs whose per-token stamps
give TTFT and TPOT. Each finished point is appended to DIR/points.jsonl at once (flushed and
synced), so an interrupted sweep keeps what it measured and `--resume` continues it without
measuring a point twice. An out-of-memory point is recorded as OOM, larger batches of the same
series are recorded as skipped after it, and the sweep goes on. At the end (or on Ctrl-C) the
reports are written from the JSONL: bench.json, bench.csv, report.md (+ PNG charts), and a table
and terminal charts on stdout (llmtop.bench_report).

Imports no torch: the engine process does the work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from llmtop.engine import catalogue, spec as specs
from llmtop.engine.metrics import first_divergence
from llmtop.engine.protocol import Configure, Generate
from llmtop.engine.session import EngineSession, Outcome
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


def full_opts(overrides: dict[str, str], dtype: str) -> dict[str, str]:
    """A configuration's every axis: defaults, then the baseline, then its own options."""
    opts = {**catalogue.DEFAULTS, **catalogue.PRESETS["baseline"], **overrides}
    opts["dtype"] = dtype
    return opts


def _int_list(text: str, flag: str) -> list[int]:
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


def default_configs(dtype: str) -> list[dict[str, Any]]:
    return [{"name": n, "opts": dict(o)} for n, o in STUDY_CONFIGS]


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
    except specs.ModelSpecError as e:
        raise BenchError(str(e)) from None
    if plan.dtype not in catalogue.AXES["dtype"]:
        raise BenchError(f"unknown dtype {plan.dtype!r}")
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
        plan.configs, plan.default_configs = default_configs(plan.dtype), True
    for c in plan.configs:
        why = catalogue.conflicts(full_opts(c["opts"], plan.dtype))
        if why:
            raise BenchError(f"configuration {c['name']!r}: {why}")
    if args.batch is not None:
        plan.batches = _int_list(args.batch, "--batch")
    if args.prompt_len is not None:
        plan.prompt_lens = _int_list(args.prompt_len, "--prompt-len")
    if args.max_new_tokens is not None:
        plan.new_tokens = _int_list(args.max_new_tokens, "--max-new-tokens")
    if args.tp is not None:
        plan.tps = _int_list(args.tp, "--tp")
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
    return plan


def batches_for(plan: Plan, device: str) -> list[int]:
    if plan.batches is not None:
        return plan.batches
    return DEFAULT_BATCHES + (EXTRA_GPU_BATCHES if device.startswith("cuda") else [])


# ---- the results file -----------------------------------------------------------------------

def read_lines(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The JSONL's records up to the first damaged line, and a one-line note about the damage.

    A sweep killed mid-write leaves at most a cut last line: it is ignored (and rewritten by
    the next append, which starts on a fresh line)."""
    out: list[dict[str, Any]] = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out, None
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}") from None
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or "type" not in rec:
                raise ValueError("not a record")
        except ValueError:
            last = n == len(lines) or all(not rest.strip() for rest in lines[n:])
            if last:
                return out, f"{path}: line {n} was cut short (an interrupted write); ignored"
            raise BenchError(f"{path}: line {n} is not a bench record; the file is damaged "
                             f"(move it away or fix that line)") from None
        out.append(rec)
    return out, None


class PointStore:
    """Appends records to points.jsonl, each line flushed and synced before the next point."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # a line cut by a killed sweep: drop it, the point it began is measured again
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":"), allow_nan=False,
                                 default=_nan_free) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _nan_free(obj: Any) -> Any:
    return str(obj)


def _clean(value: Any) -> Any:
    """NaN and infinities as None, so every file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def saved_plan(records: list[dict[str, Any]]) -> Plan | None:
    plans = [r for r in records if r["type"] == "plan"]
    if not plans:
        return None
    data = plans[-1]["plan"]
    known = {f for f in Plan.__dataclass_fields__}
    return Plan(**{k: v for k, v in data.items() if k in known})


def done_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if r["type"] == "point" and r.get("status") in FINAL}


# ---- telemetry ------------------------------------------------------------------------------

class Telemetry:
    """GPU power during each run, from a Sampler in its own process (profilers.sampler_process:
    a crash in the vendor library ends the readings, not the sweep)."""

    def __init__(self, enabled: bool = True, hz: float = 10.0,
                 warn: Callable[[str], None] | None = None) -> None:
        self.sampler = None
        self.reason = ""
        self.devices: list[dict[str, Any]] = []
        self._described: dict[str, Any] = {}
        self._warn = warn or (lambda message: None)
        if not enabled:
            self.reason = "turned off (--no-telemetry)"
            return
        try:
            from llmtop.profilers.gpu import BackendUnavailable
            from llmtop.profilers.sampler_process import SamplerDied, SamplerProcess
        except Exception as e:  # the profilers package is optional here
            self.reason = f"llmtop.profilers is not available ({type(e).__name__}: {e})"
            return
        try:
            self.sampler = SamplerProcess(hz)
        except (BackendUnavailable, SamplerDied) as e:
            self.reason = str(e)
            return
        self.devices = [asdict(d) for d in self.sampler.devices]
        self._described = {"backend": self.sampler.backend_name, "devices": self.devices,
                            "versions": self.sampler.versions}
        if self.sampler.topology is not None:
            self._described["topology"] = self.sampler.topology
        elif self.sampler.topology_error:
            self._described["topology_error"] = self.sampler.topology_error

    def describe(self) -> dict[str, Any]:
        if not self._described:
            return {"available": False, "reason": self.reason}
        return {"available": True, **self._described}

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None

    def summary(self, t0_ns: int, t1_ns: int, gpus: list[int] | None, tokens: int) -> dict[str, Any]:
        if self.sampler is None:
            return {"available": False, "reason": self.reason} if self.reason else {"available": False}
        from llmtop.profilers.sampler_process import SamplerDied

        try:
            return power_summary(self.sampler, t0_ns, t1_ns, gpus, tokens)
        except SamplerDied as e:
            self.stop()
            self.reason = f"{e}; no GPU power from this run on"
            self._warn(f"llmtop bench: {self.reason} (the sweep goes on)")
            return {"available": False, "reason": self.reason}


def power_summary(sampler: Any, t0_ns: int, t1_ns: int, gpus: list[int] | None,
                  tokens: int) -> dict[str, Any]:
    """Mean power of the GPUs in use over [t0, t1], the energy per generated token, and each
    GPU's own readings (mean power and utilization, peak memory): with tensor parallelism the
    ranks' GPUs do not work alike, and the study asks for each one.

    Energy = sum over GPUs of mean power x duration: the samples come every 100 ms and a run
    lasts longer, which is the resolution NVML's power reading honestly has.
    """
    duration_s = max(0, t1_ns - t0_ns) / 1e9
    per_gpu: dict[int, list[Any]] = {}
    for s in sampler.samples_between(t0_ns, t1_ns):
        if gpus is None or s.index in gpus:
            per_gpu.setdefault(s.index, []).append(s)
    power = {i: [float(s.power_w) for s in v if s.power_w is not None] for i, v in per_gpu.items()}
    power = {i: v for i, v in power.items() if v}
    if not power:
        return {"available": False, "reason": "no power samples during the run"}
    means = {i: sum(v) / len(v) for i, v in power.items()}
    total = sum(means.values())
    energy = total * duration_s
    return {"available": True, "mean_power_w": total, "energy_j": energy,
            "energy_j_per_token": energy / tokens if tokens else None,
            "samples": sum(len(v) for v in power.values()), "gpus": sorted(means),
            "duration_s": duration_s,
            "per_gpu": {str(i): _gpu_readings(per_gpu[i]) for i in sorted(per_gpu)}}


def _gpu_readings(samples: list[Any]) -> dict[str, float | None]:
    """One GPU over a run: mean power and utilization, the most memory it held."""
    mem = [s.mem_used for s in samples if s.mem_used is not None]
    return {"power_w": _mean([s.power_w for s in samples]),
            "util_pct": _mean([s.util_pct for s in samples]),
            "mem_used_gib": max(mem) / 2**30 if mem else None}


def rank_gpus(plan: Plan, tp: int) -> list[int] | None:
    """The GPUs a tp point's ranks run on: the first tp of --gpus, or None (llmtop chooses)."""
    return None if plan.gpus is None else plan.gpus[:tp]


def telemetry_gpus(record: dict[str, Any], device: str, tp: int) -> list[int] | None:
    """The GPUs whose power a run is charged with: the engine's own ranks as the telemetry
    numbers them (the run record's model.gpus, the set the engine chose or was given), else
    the ordinals from the device (right only where CUDA_VISIBLE_DEVICES is unset)."""
    gpus = (record.get("model") or {}).get("gpus")
    return list(gpus) if gpus else gpu_indices(device, tp)


def gpu_indices(device: str, tp: int) -> list[int] | None:
    if not device.startswith("cuda"):
        return None
    _, _, idx = device.partition(":")
    first = int(idx) if idx.isdigit() else 0
    return list(range(first, first + tp))


# ---- progress -------------------------------------------------------------------------------

def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """A bar with ETA on a terminal; one line per finished point otherwise (logs, CI)."""

    def __init__(self, total_runs: int, total_points: int, err: TextIO) -> None:
        self.total = max(total_runs, 1)
        self.points = total_points
        self.err = err
        self.tty = hasattr(err, "isatty") and err.isatty()
        self.done = 0.0
        self.points_done = 0
        self.t0 = time.monotonic()
        self.label = ""
        self.detail = ""
        self._last = 0.0
        self.tokens_expected = 1   # tokens of the run in progress
        self.run_base = 0.0        # units (generated steps) done before the run in progress

    def eta(self) -> str:
        if self.done <= 0:
            return "?"
        elapsed = time.monotonic() - self.t0
        return _fmt_s(elapsed / self.done * (self.total - self.done))

    def set(self, label: str, detail: str = "") -> None:
        self.label, self.detail = label, detail
        self.draw(force=True)

    def advance(self, units: float) -> None:
        self.done = min(self.total, self.done + units)
        self.run_base = self.done

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = self.done / self.total
        width = 24
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        self.err.write(f"\r\033[K[{bar}] {frac:4.0%} {self.points_done}/{self.points} points  "
                       f"{self.label} {self.detail}  ETA {self.eta()}")
        self.err.flush()

    def point_done(self, spec: PointSpec, text: str) -> None:
        self.points_done += 1
        elapsed = _fmt_s(time.monotonic() - self.t0)
        line = (f"[{self.points_done}/{self.points}] {spec.label()}: {text}  "
                f"(elapsed {elapsed}, ETA {self.eta()})")
        if self.tty:
            self.err.write("\r\033[K" + line + "\n")
            self.draw(force=True)
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def message(self, text: str) -> None:
        if self.tty:
            self.err.write("\r\033[K")
        self.err.write(text + "\n")
        self.err.flush()
        self.draw(force=True)

    def close(self) -> None:
        if self.tty:
            self.err.write("\r\033[K")
            self.err.flush()


# ---- one point ------------------------------------------------------------------------------

def compact_run(record: dict[str, Any], telemetry: dict[str, Any],
                events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a bench keeps of a run record: every stamp and id, the metrics, no repetition."""
    tokens = record["tokens"]
    first = tokens[0] if tokens else []
    m = record["metrics"]
    return {
        "start_ns": record["start_ns"],
        "t_ns": [t["t_ns"] for t in first],
        "ids": [[t["id"] for t in req] for req in tokens],
        "text": "".join(t["text"] for t in first),
        "n_tokens": m["n_tokens"],
        "ttft_ms": m["ttft_ms"],
        "tpot_ms": m["tpot_ms"],
        "e2e_ms": m["e2e_ms"],
        "itl_p50_ms": m["itl"]["p50"],
        "itl_p99_ms": m["itl"]["p99"],
        "stopped": record.get("stopped", ""),
        "telemetry": telemetry,
        "engine_events": events,
    }


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return 0.0 if values else None
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[dict[str, Any]], batch: int, prompt_len: int,
              meta: dict[str, Any] | None, tp: int = 1) -> dict[str, Any]:
    """A point's figures from its measured runs: means over the repeats (medians and spread
    alongside), throughputs, and the roofline from the mean TTFT and TPOT."""
    from llmtop.engine import metrics

    ttft = [r["ttft_ms"] for r in runs]
    tpot = [r["tpot_ms"] for r in runs]
    e2e = [r["e2e_ms"] for r in runs]
    n = runs[0]["n_tokens"]
    out: dict[str, Any] = {
        "n_tokens": n,
        "ttft_ms": _mean(ttft), "ttft_ms_median": metrics.percentile(ttft, 50),
        "ttft_ms_min": min(ttft), "ttft_ms_std": _std(ttft),
        "tpot_ms": _mean(tpot), "tpot_ms_median": metrics.percentile(tpot, 50),
        "tpot_ms_min": min(tpot), "tpot_ms_std": _std(tpot),
        "e2e_ms": _mean(e2e),
    }
    out["tokens_per_s"] = batch * n / (out["e2e_ms"] / 1e3) if out["e2e_ms"] else None
    out["prefill_tokens_per_s"] = batch * prompt_len / (out["ttft_ms"] / 1e3) if out["ttft_ms"] else None
    out["decode_tokens_per_s"] = batch / (out["tpot_ms"] / 1e3) if out["tpot_ms"] else None
    if meta and meta.get("ceilings") and meta.get("model"):
        model, ceil = meta["model"], meta["ceilings"]
        pseudo = metrics.RunMetrics(n, batch, prompt_len, out["ttft_ms"], out["tpot_ms"],
                                    out["e2e_ms"], [], metrics.Summary.of([]), 0, 0, 0)
        roof = metrics.roofline(pseudo, model["weight_bytes"], model["params"],
                                meta.get("kv_bytes_per_token") or 0, ceil["mem_bw_gb_s"],
                                ceil["peak_tflops"], ranks=tp)
        out["roofline"] = asdict(roof)
    tele = [r.get("telemetry") or {} for r in runs]
    if tele and all(t.get("available") for t in tele):
        out["mean_power_w"] = _mean([t["mean_power_w"] for t in tele])
        out["energy_j_per_token"] = _mean([t.get("energy_j_per_token") for t in tele])
        per_gpu: dict[str, dict[str, Any]] = {}
        for gpu in sorted({g for t in tele for g in t.get("per_gpu") or {}}, key=int):
            readings = [t["per_gpu"][gpu] for t in tele if gpu in (t.get("per_gpu") or {})]
            per_gpu[gpu] = {k: _mean([r.get(k) for r in readings])
                            for k in ("power_w", "util_pct", "mem_used_gib")}
        if per_gpu:
            out["per_gpu"] = per_gpu
    return _clean(out)


def _guard(ids: list[list[int]], base: list[list[int]] | None) -> str:
    if base is None:
        return "no baseline"
    k = first_divergence(base[0] if base else [], ids[0] if ids else [])
    return "identical" if k is None else f"diverged at {k}"


# ---- the sweep ------------------------------------------------------------------------------

def run_sweep(plan: Plan, out: Path, records: list[dict[str, Any]], err: TextIO,
              stall_s: float = 900.0, telemetry_on: bool = True) -> int:
    """Measures every point of `plan` not final in `records`; returns the exit code."""
    store = PointStore(out / POINTS_FILE)
    store.append({"type": "plan", "schema": SCHEMA, "unix": time.time(), "plan": asdict(plan),
                  "resumed": bool(records)})
    done = done_keys(records)
    meta = next((r for r in records if r["type"] == "meta"), None)
    base_ids: dict[str, list[list[int]]] = {}
    for r in records:
        if r["type"] == "point" and r.get("config") == BASELINE and r.get("status") == "ok" and r.get("runs"):
            base_ids[_series_key(r) + f"|b{r['batch']}"] = r["runs"][0]["ids"]

    if plan.batches is not None and not plan.default_configs:
        # the whole plan is known without the engine: a finished sweep needs no engine at all
        keys = {point_key(c["name"], tp, p, n, b) for tp in plan.tps for c in plan.configs
                for p in plan.prompt_lens for n in plan.new_tokens for b in plan.batches}
        if keys <= done:
            store.close()
            _msg(err, f"llmtop bench: all {len(keys)} points of this sweep are measured, 0 to go")
            return 0
    progress: Progress | None = None
    session = EngineSession(str(out / "engine.log"), stall_s,
                            on_progress=lambda kind, ev: _on_engine(progress, kind, ev))
    telemetry = Telemetry(telemetry_on, warn=lambda message: _msg(err, message))  # forks: no thread yet
    session.start()
    interrupted = False
    try:
        # the first configuration tells the resolved device, so the default batches and what
        # the device can run are known before the plan is laid out
        configs = list(plan.configs)
        probe = Configure(plan.model, plan.device, plan.dtype,
                          full_opts(configs[0]["opts"], plan.dtype), plan.tps[0],
                          rank_gpus(plan, plan.tps[0]))
        _msg(err, f"llmtop bench: starting the engine and loading {plan.model} ...")
        first = session.configure(probe)
        if first.error_kind and configs[0]["name"] == BASELINE:
            raise BenchError(f"the baseline configuration does not run: {first.message}")
        device = session.applied.device if session.applied else plan.device
        batches = batches_for(plan, device)
        if plan.default_configs and session.device_info is not None:
            configs, dropped = _runnable(configs, session.device_info.options, plan.dtype)
            for name, why in dropped:
                store.append({"type": "note", "config": name, "text": f"not run: {why}"})
        points = [PointSpec(c["name"], tp, p, n, b) for tp in plan.tps for c in configs
                  for p in plan.prompt_lens for n in plan.new_tokens for b in batches]
        todo = [pt for pt in points if pt.key not in done]
        runs_per_point = plan.warmup + plan.repeat
        by_name = {c["name"]: c for c in configs}

        def run_tokens(pt: PointSpec, warm: bool) -> int:
            """New tokens of one run: a warm-up is shorter, except with a static cache, whose
            length (prompt + new tokens) must match the measured runs' or it recompiles."""
            static = full_opts(by_name[pt.config]["opts"], plan.dtype).get("kv") == "static"
            return pt.new_tokens if not warm or static else min(pt.new_tokens, plan.warmup_tokens)

        def cost(pt: PointSpec) -> int:  # progress counts generated steps, a fair proxy of time
            return plan.warmup * run_tokens(pt, True) + plan.repeat * run_tokens(pt, False)

        progress = Progress(sum(cost(pt) for pt in todo), len(todo), err)
        if done:
            progress.message(f"resuming: {len(points) - len(todo)} of {len(points)} points already "
                             f"measured, {len(todo)} to go")
        oom_at: dict[str, int] = {}
        for r in records:
            if r["type"] == "point" and r.get("status") == "oom":
                series = _series_key(r)
                oom_at[series] = min(oom_at.get(series, r["batch"]), r["batch"])
        config_error: dict[tuple[str, int], Outcome] = {}
        for pt in todo:
            cfg = by_name[pt.config]
            series = _series_key(asdict(pt))
            base = {"type": "point", "key": pt.key, **asdict(pt), "opts": full_opts(cfg["opts"], plan.dtype),
                    "model": plan.model, "device": device, "repeat": plan.repeat, "warmup": plan.warmup,
                    "unix": time.time()}
            if series in oom_at and pt.batch > oom_at[series]:
                store.append({**base, "status": "skipped", "runs": [],
                              "error": f"batch {oom_at[series]} ran out of memory"})
                progress.advance(cost(pt))
                progress.point_done(pt, f"skipped (batch {oom_at[series]} ran out of memory)")
                continue
            progress.set(pt.label(), "configuring")
            want = Configure(plan.model, plan.device, plan.dtype, base["opts"], pt.tp,
                             rank_gpus(plan, pt.tp))
            outcome = config_error.get((pt.config, pt.tp))
            if outcome is None:
                outcome = session.configure(want)
                if outcome.error_kind:
                    config_error[(pt.config, pt.tp)] = outcome
            if outcome.error_kind:
                status = "oom" if _is_oom(outcome) else "unavailable" if outcome.error_kind == "config" else "error"
                store.append({**base, "status": status, "runs": [], "error": outcome.message})
                progress.advance(cost(pt))
                progress.point_done(pt, f"{status}: {outcome.message}")
                continue
            runs: list[dict[str, Any]] = []
            collectives: dict[str, float] = {}
            status, error = "ok", ""
            point_base = progress.done
            for i in range(runs_per_point):
                warm = i < plan.warmup
                new = run_tokens(pt, warm)
                progress.tokens_expected = new
                progress.set(pt.label(), f"warm-up {i + 1}/{plan.warmup}" if warm
                             else f"run {i - plan.warmup + 1}/{plan.repeat}")
                # tensor parallel: the first warm-up profiles a few decode steps for the share
                # spent in collectives, so the measured runs never pay for the profiler
                profile = min(4, new - 1) if warm and i == 0 and pt.tp > 1 else 0
                req = Generate(prompt_len=pt.prompt_len, batch=pt.batch, max_new_tokens=new,
                               ignore_eos=plan.ignore_eos, seed=plan.seed, profile_steps=profile)
                res = session.generate(req)
                progress.run_base += new
                progress.done = progress.run_base
                if res.error_kind:
                    status = "oom" if _is_oom(res) else "error"
                    error = res.message
                    break
                rec = res.record
                if meta is None:
                    meta = _meta(rec, session, telemetry)
                    store.append(meta)
                if warm:
                    if res.profile is not None:
                        collectives = {k: res.profile[k] for k in (
                            "collective_ms", "collective_pct", "step_ms", "busy_ms")}
                    continue
                tokens = rec["metrics"]["n_tokens"] * pt.batch
                stamps = [t["t_ns"] for t in rec["tokens"][0]] if rec["tokens"] else []
                tele = telemetry.summary(rec["start_ns"], stamps[-1] if stamps else rec["start_ns"],
                                         telemetry_gpus(rec, device, pt.tp), tokens)
                runs.append(compact_run(rec, tele, res.events))
            progress.done = progress.run_base = point_base + cost(pt)
            point = {**base, "status": status, "runs": runs if status == "ok" else [],
                     "error": error, "unix": time.time()}
            if status == "ok":
                point["applied"] = asdict(session.applied)
                point["gpus"] = rec["model"].get("gpus") or []
                point["gpu_choice"] = rec["model"].get("gpu_choice", "")
                if collectives:
                    point["profiled_step"] = collectives
                point.update(summarize(runs, pt.batch, pt.prompt_len, meta, pt.tp))
                bkey = series.replace(f"{pt.config}|", f"{BASELINE}|", 1) + f"|b{pt.batch}"
                if pt.config == BASELINE:
                    base_ids[series + f"|b{pt.batch}"] = runs[0]["ids"]
                    point["guard"] = "baseline"
                else:
                    point["guard"] = _guard(runs[0]["ids"], base_ids.get(bkey))
            elif status == "oom":
                oom_at[series] = min(oom_at.get(series, pt.batch), pt.batch)
            store.append(_clean(point))
            if status == "ok":
                progress.point_done(pt, f"TTFT {point['ttft_ms']:.2f} ms  TPOT {point['tpot_ms']:.2f} ms")
            else:
                progress.point_done(pt, f"{status.upper()}: {error}")
    except KeyboardInterrupt:
        interrupted = True
        # `timeout -s INT` signals the process and then its group: a second SIGINT must not
        # cut the clean-up short (the engine's shutdown, the reports); main() restores it
        _ignore_sigint()
    finally:
        if progress is not None:
            progress.close()
        telemetry.stop()
        session.close()
        store.close()
    if interrupted:
        _msg(err, f"llmtop bench: interrupted; what was measured is in {out / POINTS_FILE}; "
                  f"continue with: llmtop bench --out {out} --resume")
        return 130
    return 0


def _ignore_sigint() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:   # not the main thread
        pass


def _on_engine(progress: Progress | None, kind: str, ev: Any) -> None:
    if progress is None:
        return
    if kind == "token":
        expected = max(1, progress.tokens_expected)
        progress.done = min(progress.total, progress.run_base + min(expected, ev.index + 1))
        progress.draw()
    elif kind == "status" and ev.phase in ("loading", "compiling", "warming", "capturing", "tuning"):
        progress.detail = f"{ev.phase}: {ev.detail}"[:60]
        progress.draw()


def _series_key(point: dict[str, Any]) -> str:
    return f"{point['config']}|tp{point['tp']}|p{point['prompt_len']}|n{point['new_tokens']}"


OOM_WORDS = ("out of memory", "outofmemory", "can't allocate memory", "cannot allocate memory",
             "not enough memory")


def _is_oom(outcome: Outcome) -> bool:
    """Device OOM (the engine's "oom"), or a host allocation failure reported as an error."""
    text = outcome.message.lower()
    return outcome.error_kind == "oom" or any(w in text for w in OOM_WORDS)


def _runnable(configs: list[dict[str, Any]], options: dict[str, Any], dtype: str
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    keep, dropped = [], []
    for c in configs:
        opts = full_opts(c["opts"], dtype)
        why = catalogue.conflicts(opts)
        if why is None:
            for axis, value in opts.items():
                a = options.get(axis, {}).get(value)
                if a is not None and not a.get("ok", True):
                    why = f"{axis}={value}: {a.get('reason', 'unavailable')}"
                    break
        if why is None:
            keep.append(c)
        else:
            dropped.append((c["name"], why))
    return keep, dropped


def _meta(record: dict[str, Any], session: EngineSession, telemetry: Telemetry) -> dict[str, Any]:
    info = session.device_info
    return _clean({
        "type": "meta",
        "unix": time.time(),
        "model": record["model"],
        "machine": record.get("machine", {}),
        "versions": record.get("versions", {}),
        "ceilings": record.get("ceilings", {}),
        "kv_bytes_per_token": record.get("kv_bytes_per_token"),
        "device_info": asdict(info) if info else None,
        "telemetry": telemetry.describe(),
    })


def _msg(err: TextIO, text: str) -> None:
    err.write(text + "\n")
    err.flush()


# ---- command line ---------------------------------------------------------------------------

def add_bench_options(p: argparse.ArgumentParser) -> None:
    """`llmtop bench`'s options. Unset ones stay None, so --resume can tell what was given."""
    g = p.add_argument_group("model and device")
    g.add_argument("--model", default=None,
                   help="as for `llmtop run` (default: embedded); e.g. synthetic:llama-2-7b")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N; auto (default) = cuda if present")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default bf16")
    c = p.add_argument_group("configurations (default: baseline + each optimization of the study "
                             "that runs on this device)")
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
                   help="batch sizes (default 1,2,4,8, and 16,32 on a GPU: an OOM ends the series)")
    s.add_argument("--prompt-len", default=None, metavar="2048", help="prompt lengths (default 2048)")
    s.add_argument("--max-new-tokens", default=None, metavar="128", help="new tokens (default 128)")
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


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if (args.resume or args.report_only) and not args.out:
            raise BenchError("--resume and --report-only need --out DIR (the sweep's folder)")
        folder = Path(args.out or time.strftime("bench-%Y%m%d-%H%M%S"))
        if folder.exists() and not folder.is_dir():
            raise BenchError(f"--out {folder} is a file, not a folder")
        points_path = folder / POINTS_FILE
        records, note = read_lines(points_path)
        if note:
            _msg(err, f"llmtop bench: {note}")
        if args.report_only:
            if not any(r["type"] == "point" for r in records):
                raise BenchError(f"{points_path} holds no measured point")
            return _report(folder, records, out, err, args.no_plots)
        if records and not args.resume:
            raise BenchError(f"{folder} already holds a sweep: add --resume to continue it, "
                             f"or choose another --out")
        if args.resume and not records:
            _msg(err, f"llmtop bench: nothing to resume in {folder}; starting a new sweep")
        plan = plan_from_args(args, saved_plan(records) if args.resume else None)
        if args.stall_timeout <= 0:
            raise BenchError("--stall-timeout must be positive")
    except BenchError as e:
        print(f"llmtop: {e}", file=err)
        return 2
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = run_sweep(plan, folder, records, err, args.stall_timeout, not args.no_telemetry)
        records, _ = read_lines(points_path)
        if any(r["type"] == "point" for r in records):
            _report(folder, records, out, err, args.no_plots)
        return code
    except BenchError as e:
        print(f"llmtop: {e}", file=err)
        return 1
    finally:
        try:
            signal.signal(signal.SIGINT, handler)
        except (ValueError, TypeError):
            pass


def _report(folder: Path, records: list[dict[str, Any]], out: TextIO, err: TextIO,
            no_plots: bool) -> int:
    from llmtop import bench_report

    results = bench_report.build_results(resummarize(records))
    paths = bench_report.write_all(results, folder)
    out.write(bench_report.table(results) + "\n")
    if not no_plots:
        for chart in bench_report.terminal_charts(results):
            out.write(chart + "\n")
    out.write("written: " + ", ".join(str(p) for p in paths) + "\n")
    return 0


def resummarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each measured point's figures recomputed from its runs, so a rebuilt
    report carries today's formulas (the roofline's TP scaling came after some sweeps)."""
    meta = next((r for r in records if r.get("type") == "meta"), None)
    out = []
    for r in records:
        if r.get("type") == "point" and r.get("status") == "ok" and r.get("runs"):
            r = {**r, **summarize(r["runs"], r["batch"], r["prompt_len"], meta, int(r.get("tp") or 1))}
        out.append(r)
    return out


def iter_points(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The last record of each point key (a resumed error point is replaced by its retry)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "point":
            latest[r["key"]] = r
    return iter(latest.values())
