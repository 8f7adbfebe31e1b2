"""Reports of a bench sweep: terminal table and charts, JSON, CSV, Markdown (+ PNG charts).

Everything is built from the sweep's points.jsonl (llmtop.bench) by `build_results`, so a
report can be rebuilt at any time (`llmtop bench --out DIR --report-only`), including from an
interrupted sweep. The study's two charts: prefill latency (TTFT) vs batch and decode latency
(TPOT) vs batch, one line per configuration. PNG needs matplotlib (`pip install 'llmtop-profiler[plots]'`);
the terminal charts use plotext. Neither is needed for the numbers.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from llmtop.bench_charts import CHARTS, chart_name, groups, png_charts, terminal_charts, title
from llmtop.bench_plan import BASELINE, SCHEMA, BenchError
from llmtop.bench_store import iter_points, read_lines
from llmtop.engine import catalogue
from llmtop.profilers.report import matrix_text

AXES = tuple(catalogue.AXES)

CSV_FIELDS = [
    "config", "tp", "prompt_len", "new_tokens", "batch", "status", "repeats", "n_tokens",
    "ttft_ms", "ttft_ms_median", "ttft_ms_min", "ttft_ms_std",
    "tpot_ms", "tpot_ms_median", "tpot_ms_min", "tpot_ms_std",
    "e2e_ms", "tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
    "ttft_speedup", "tpot_speedup",
    "prefill_floor_ms", "decode_floor_ms", "prefill_roofline_pct", "decode_roofline_pct",
    "achieved_gb_s", "mean_power_w", "energy_j_per_token", "guard",
    *AXES, "model", "device", "error",
    "tpot_steady_ms", "stalls", "stall_ms", "guard_check",   # newer engines' records only
]


# ---- results --------------------------------------------------------------------------------

def build_results(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep as one document: machine, versions, GPU, model, configurations, points (with
    every token stamp), speedups over the baseline and % of the roofline."""
    plans = [r for r in records if r.get("type") == "plan"]
    metas = [r for r in records if r.get("type") == "meta"]
    meta = metas[0] if metas else {}
    plan = plans[-1]["plan"] if plans else {}
    points = [dict(p) for p in iter_points(records)]
    order = [c["name"] for c in plan.get("configs", [])]
    for p in points:
        if p["config"] not in order:
            order.append(p["config"])
    points.sort(key=lambda p: (order.index(p["config"]), p["tp"], p["prompt_len"],
                               p["new_tokens"], p["batch"]))
    baseline = BASELINE if BASELINE in order else (order[0] if order else BASELINE)
    base = {_where(p): p for p in points if p["config"] == baseline and p["status"] == "ok"}
    for p in points:
        b = base.get(_where(p))
        ok = p["status"] == "ok" and b is not None
        p["ttft_speedup"] = _ratio(b and b.get("ttft_ms"), p.get("ttft_ms")) if ok else None
        p["tpot_speedup"] = _ratio(b and b.get("tpot_ms"), p.get("tpot_ms")) if ok else None
        p["repeats"] = len(p.get("runs") or [])
    configs = []
    for name in order:
        first = next((p for p in points if p["config"] == name), None)
        known = next((c for c in plan.get("configs", []) if c["name"] == name), None)
        configs.append({"name": name, "opts": (first or {}).get("opts") or (known or {}).get("opts", {})})
    machine = meta.get("machine", {})
    notes = []
    for r in records:
        if r.get("type") == "note":
            text = f"{r.get('config')}: {r.get('text')}" if r.get("config") else r.get("text", "")
            if text not in notes:
                notes.append(text)
    for p in points:
        kinds: dict[str, int] = {}
        for run in p.get("runs") or []:
            for ev in run.get("engine_events") or []:
                kinds[ev.get("kind", "?")] = kinds.get(ev.get("kind", "?"), 0) + 1
        p["engine_events"] = kinds
        if kinds:
            what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            notes.append(f"{p['config']} batch {p['batch']} (prompt {p['prompt_len']}): {what} during "
                         f"the measured runs: their timings include that work")
    if len({json.dumps(m.get("machine", {}).get("gpus")) for m in metas}) > 1 or \
            len({m.get("machine", {}).get("hostname") for m in metas}) > 1:
        notes.append("warning: this sweep was measured on more than one machine (it was resumed elsewhere)")
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plan": plan,
        "model": meta.get("model"),
        "machine": machine,
        "versions": meta.get("versions", {}),
        "gpus": machine.get("gpus", []),
        "ceilings": meta.get("ceilings"),
        "kv_bytes_per_token": meta.get("kv_bytes_per_token"),
        "device_info": meta.get("device_info"),
        "endpoint": meta.get("endpoint"),   # bench --endpoint: the server measured
        "telemetry": {**(meta.get("telemetry") or {"available": False, "reason": "not recorded"}),
                      **_telemetry_totals(points)},
        "baseline": baseline,
        "configs": configs,
        "notes": notes,
        "points": points,
    }


def _where(p: dict[str, Any]) -> tuple:
    return (p["tp"], p["prompt_len"], p["new_tokens"], p["batch"])


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _telemetry_totals(points: list[dict[str, Any]]) -> dict[str, Any]:
    power = [p["mean_power_w"] for p in points if p.get("mean_power_w") is not None]
    energy = [p["energy_j_per_token"] for p in points if p.get("energy_j_per_token") is not None]
    if not power:
        return {}
    return {"mean_power_w": sum(power) / len(power),
            "mean_energy_j_per_token": sum(energy) / len(energy) if energy else None}


def load(path: str | Path) -> dict[str, Any]:
    """Bench results from a bench.json, a points.jsonl, or a sweep folder (ValueError if not)."""
    path = Path(path)
    if path.is_dir():
        if (path / "points.jsonl").exists():
            path = path / "points.jsonl"
        elif (path / "bench.json").exists():
            path = path / "bench.json"
        else:
            raise ValueError(f"{path} holds no bench results (points.jsonl or bench.json)")
    if path.suffix == ".jsonl":
        try:
            records, _ = read_lines(path)
        except BenchError as e:
            raise ValueError(str(e)) from None
        return build_results(records)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a bench result ({SCHEMA})")
    return data


# ---- formats --------------------------------------------------------------------------------

def _f(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _varying(points: list[dict[str, Any]]) -> list[str]:
    return [k for k in ("tp", "prompt_len", "new_tokens") if len({p[k] for p in points}) > 1]


# figures a newer engine's records carry (absent from older sweeps: their columns are not shown)
OPTIONAL = (("tpot_steady_ms", "steady TPOT ms"), ("stalls", "stalls"), ("guard_check", "guard"))


def _optional(points: list[dict[str, Any]]) -> list[str]:
    return [k for k, _ in OPTIONAL if any(p.get(k) is not None for p in points if p["status"] == "ok")]


def _cell(p: dict[str, Any], key: str) -> str:
    value = p.get(key)
    if key == "stalls" and value is not None:
        return f"{value}" + (f" ({_f(p.get('stall_ms'), '.0f')} ms)" if value else "")
    return value if isinstance(value, str) else _f(value)


def _row(p: dict[str, Any], varying: list[str], optional: list[str] = ()) -> list[str]:
    roof = p.get("roofline") or {}
    cells = [p["config"]] + [str(p[k]) for k in varying] + [str(p["batch"])]
    if p["status"] != "ok":
        status = p["status"].upper()
        return cells + [status] + ["-"] * (9 + len(optional))
    return cells + [
        "ok", _f(p.get("ttft_ms")), _f(p.get("tpot_ms")), _f(p.get("tokens_per_s"), ".1f"),
        _f(p.get("ttft_speedup"), ".2f") + ("x" if p.get("ttft_speedup") is not None else ""),
        _f(p.get("tpot_speedup"), ".2f") + ("x" if p.get("tpot_speedup") is not None else ""),
        _f(roof.get("prefill_pct"), ".1f"), _f(roof.get("decode_pct"), ".1f"),
        _f(p.get("mean_power_w"), ".0f"), _f(p.get("energy_j_per_token"), ".3f"),
    ] + [_cell(p, k) for k in optional]


_SHORT = {"tp": "tp", "prompt_len": "prompt", "new_tokens": "new"}
_HEAD = ["status", "TTFT ms", "TPOT ms", "tok/s", "TTFT x", "TPOT x", "prefill %roof",
         "decode %roof", "W", "J/token"]


def _header(varying: list[str], optional: list[str] = ()) -> list[str]:
    names = dict(OPTIONAL)
    return ["config"] + [_SHORT[k] for k in varying] + ["batch"] + _HEAD + [names[k] for k in optional]


def table(results: dict[str, Any]) -> str:
    """The points as an aligned terminal table (speedups are over the baseline)."""
    points = results["points"]
    varying, optional = _varying(points), _optional(points)
    rows = [_header(varying, optional)] + [_row(p, varying, optional) for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    head = title(results)
    fixed = [f"{_SHORT[k]} {points[0][k]}" for k in ("tp", "prompt_len", "new_tokens")
             if k not in varying] if points else []
    errors = [f"  {p['config']} b={p['batch']}: {p['status']}: {p.get('error')}"
              for p in points if p["status"] != "ok" and p.get("error")]
    return "\n".join([head, "  ".join(fixed) + f"  (x = speedup over {results['baseline']})", *lines,
                      *errors, *[f"note: {n}" for n in results.get("notes", [])]])


def to_csv(results: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in results["points"]:
            roof = p.get("roofline") or {}
            row = {k: p.get(k) for k in CSV_FIELDS}
            row.update({
                "prefill_floor_ms": roof.get("prefill_floor_ms"),
                "decode_floor_ms": roof.get("decode_floor_ms"),
                "prefill_roofline_pct": roof.get("prefill_pct"),
                "decode_roofline_pct": roof.get("decode_pct"),
                "achieved_gb_s": roof.get("achieved_gb_s"),
            })
            for axis in AXES:
                row[axis] = (p.get("opts") or {}).get(axis)
            w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                        for k, v in row.items()})


def _tp_section(results: dict[str, Any], points: list[dict[str, Any]]) -> list[str]:
    """Tensor-parallel points: the GPUs each size ran on (and why), the link matrix they were
    chosen from, and the share of a decode step spent in collectives (from a profiled warm-up)."""
    tp_points = [p for p in points if p["tp"] > 1 and p["status"] == "ok"]
    if not tp_points:
        return []
    lines = ["", "## Tensor parallelism", ""]
    sets: dict[int, tuple[str, str]] = {}
    for p in points:
        if p["status"] == "ok" and p.get("gpus"):
            sets.setdefault(p["tp"], (",".join(str(g) for g in p["gpus"]), p.get("gpu_choice", "")))
    for tp, (gpus, why) in sorted(sets.items()):
        lines.append(f"- tp {tp}: GPUs {gpus}" + (f" ({why})" if why else ""))
    topo = (results.get("telemetry") or {}).get("topology")
    if topo:
        lines += ["", "Link matrix (NVML; the recommender's pick per TP size below it):", "", "```text",
                  *matrix_text(topo), "```"]
    rows = [p for p in tp_points if p.get("profiled_step")]
    if rows:
        busy = "GPU busy ms" if str(rows[0].get("device", "")).startswith("cuda") else \
            "busy in ATen ops ms"      # a CPU's profile counts the ops' own time
        lines += ["", "Collectives per decode step (torch profiler over 4 decode steps of the "
                  "point's first warm-up run; measured runs are not profiled):", "",
                  f"| config | tp | batch | profiled step ms | {busy} | in collectives ms | share |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for p in rows:
            c = p["profiled_step"]
            lines.append(f"| {p['config']} | {p['tp']} | {p['batch']} | {c['step_ms']:.2f} | "
                         f"{c['busy_ms']:.2f} | {c['collective_ms']:.2f} | {c['collective_pct']:.0f}% |")
    rows = [p for p in points if p["status"] == "ok" and p.get("per_gpu")]
    if rows:
        lines += ["", "Each GPU during the measured runs (NVML at 10 Hz: mean utilization and power, "
                  "the most memory held):", "",
                  "| config | tp | batch | GPU | util % | W | memory GiB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for p in rows:
            for gpu, r in p["per_gpu"].items():
                lines.append(f"| {p['config']} | {p['tp']} | {p['batch']} | {gpu} | "
                             f"{_f(r.get('util_pct'), '.0f')} | {_f(r.get('power_w'), '.0f')} | "
                             f"{_f(r.get('mem_used_gib'), '.1f')} |")
    return lines


def markdown(results: dict[str, Any], pngs: list[Path], png_note: str | None) -> str:
    model = results.get("model") or {}
    plan = results.get("plan") or {}
    versions = results.get("versions") or {}
    machine = results.get("machine") or {}
    ceil = results.get("ceilings") or {}
    tele = results.get("telemetry") or {}
    points = results["points"]
    lines = [f"# {title(results)}", ""]
    gpus = results.get("gpus") or []
    lines += [
        f"- date: {results.get('created', '')}",
        f"- machine: {machine.get('hostname', '?')}, {machine.get('platform', '?')}, "
        f"{machine.get('cpu_count', '?')} CPUs",
        "- GPU: " + (", ".join(f"{g['name']} ({g.get('memory_bytes', 0) / 2**30:.0f} GiB)" for g in gpus)
                     if gpus else "the server's (not sampled)" if results.get("endpoint") else
                     "none (CPU run)") + (f"; driver: {machine['driver']}" if machine.get("driver") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- model: {model.get('name', '?')}" + (" (synthetic weights: real shapes and timings, "
                                                  "meaningless text)" if model.get("synthetic") else "")
        + (f", {model['params'] / 1e9:.2f} B params, {model['weight_bytes'] / 1e9:.2f} GB of weights, "
           f"{model.get('dtype')} on {model.get('device')}" if model.get("params") else ""),
        f"- sweep: prompt {plan.get('prompt_lens') or _prompts(points)}, batch {sorted({p['batch'] for p in points})}, "
        f"new tokens {plan.get('new_tokens')}, tp {plan.get('tps')}, {plan.get('warmup')} warm-up + "
        f"{plan.get('repeat')} measured runs per point, ignore_eos={plan.get('ignore_eos')}",
    ]
    end = results.get("endpoint")
    if end:
        lines.append(f"- server: {end['server']} at {end['url']} (api {end['api']}); prompt "
                     f"{plan.get('prompt')!r}; a batch is that many concurrent streamed requests; "
                     f"stamps: {end['stamps']}")
    if ceil:
        lines.append(f"- measured ceilings: memory {ceil.get('mem_bw_gb_s', 0):.0f} GB/s, matmul "
                     f"{ceil.get('peak_tflops', 0):.1f} TFLOP/s ({ceil.get('dtype', '')}); roofline: decode "
                     f"floor = (weights + KV read) / bandwidth, prefill floor = 2 x params x tokens / FLOP/s"
                     + (" (one GPU's ceilings; a TP=k point's are k times these)"
                        if any(int(p.get("tp") or 1) > 1 for p in points) else ""))
    if tele.get("available"):
        extra = ""
        if tele.get("mean_power_w") is not None:
            extra = f": mean {tele['mean_power_w']:.0f} W over the measured runs"
            if tele.get("mean_energy_j_per_token") is not None:
                extra += f", {tele['mean_energy_j_per_token']:.3f} J per generated token on average"
        lines.append(f"- telemetry: {tele.get('backend', 'GPU')} power sampled at 10 Hz{extra}")
    else:
        lines.append(f"- telemetry: unavailable ({tele.get('reason', 'no GPU sampler')})")
    lines += ["", "TTFT = first token stamp - request start (prefill latency); TPOT = (last stamp - "
              "first stamp) / (n - 1) (decode latency). Each figure is the mean over the measured "
              "runs; `x` is the speedup over "
              f"`{results['baseline']}` at the same point (>1 is faster).", ""]
    lines += ["## Configurations", "", "| name | options |", "|---|---|"]
    for c in results["configs"]:
        opts = " ".join(f"{k}={v}" for k, v in (c.get("opts") or {}).items())
        lines.append(f"| {c['name']} | {opts} |")
    if results.get("notes"):
        lines += ["", "Not run or worth knowing:", ""] + [f"- {n}" for n in results["notes"]]
    varying, optional = _varying(points), _optional(points)
    header = _header(varying, optional)
    lines += ["", "## Results", "", "| " + " | ".join(header) + " |",
              "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    for p in points:
        lines.append("| " + " | ".join(_row(p, varying, optional)) + " |")
    errors = [p for p in points if p["status"] != "ok" and p.get("error")]
    if errors:
        lines += [""] + [f"- {p['config']} batch {p['batch']}: {p['status'].upper()}: {p['error']}"
                         for p in errors]
    lines += _tp_section(results, points)
    lines += _chart_section(results, pngs, png_note)
    return "\n".join(lines).rstrip() + "\n"


def _prompts(points: list[dict[str, Any]]) -> str:
    """An endpoint sweep's prompt lengths: the server's token counts of its text prompt."""
    return f"{sorted({p['prompt_len'] for p in points if p['status'] == 'ok'})} (tokens, the server's count)"


def _chart_section(results: dict[str, Any], pngs: list[Path], png_note: str | None) -> list[str]:
    """Each chart: the PNG (if drawn) and the terminal chart as text."""
    lines: list[str] = []
    text_charts = terminal_charts(results)
    sets = groups(results)
    several = len(sets) > 1
    for metric, kind, heading in CHARTS:
        lines += ["", f"## {heading} vs batch", ""]
        for group, _ in sets:
            name = chart_name(kind, group, several)
            if any(p.name == name for p in pngs):
                lines += [f"![{heading} vs batch]({name})", ""]
        if png_note:
            lines += [f"({png_note})", ""]
        for chart in (c for c in text_charts if heading in c):
            lines += ["```text", chart.rstrip(), "```", ""]
    return lines


def write_all(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """bench.json, bench.csv, the PNG charts (with matplotlib) and report.md in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    jpath = folder / "bench.json"
    jpath.write_text(json.dumps(results, indent=1, allow_nan=False))
    paths.append(jpath)
    cpath = folder / "bench.csv"
    to_csv(results, cpath)
    paths.append(cpath)
    pngs, note = png_charts(results, folder)
    paths += pngs
    mpath = folder / "report.md"
    mpath.write_text(markdown(results, pngs, note))
    paths.append(mpath)
    return paths

