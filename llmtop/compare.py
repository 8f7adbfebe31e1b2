"""`llmtop compare A.json B.json`: what differs between two runs or two sweeps, with ratios.

A and B are both run records (`llmtop run --headless --json`, schema llmtop.run/1) or both bench
results (bench.json, points.jsonl or a bench folder). The header lists what differs in model,
configuration, machine and versions; the body gives each figure for A and B, the ratio B/A and
which is faster. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

from llmtop import checks
from llmtop.engine.metrics import first_divergence

RUN_SCHEMA_PREFIX = "llmtop.run/"
BENCH_SCHEMA_PREFIX = "llmtop.bench/"


class CompareError(ValueError):
    """A file that cannot be compared; the message is one line."""


def load_any(path: str) -> tuple[str, dict[str, Any]]:
    """("run" | "bench", data) for a run record or bench result; CompareError otherwise."""
    p = Path(path)
    if not p.exists():
        raise CompareError(f"{path}: no such file or folder")
    if checks.file_kind(path) == "session":
        raise CompareError(f"{path} is {checks.KIND_WORDS['session']}: compare takes two run records "
                           f"(--json) or two bench results; `llmtop replay` plays a session")
    if p.is_dir() or p.suffix == ".jsonl":
        from llmtop import bench_report

        try:
            return "bench", bench_report.load(p)
        except (ValueError, OSError) as e:
            raise CompareError(str(e)) from None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not a text file") from None
    except ValueError as e:
        raise CompareError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise CompareError(f"{path}: cannot be read ({e.strerror})") from None
    schema = str(data.get("schema", "")) if isinstance(data, dict) else ""
    if schema.startswith(RUN_SCHEMA_PREFIX):
        for key in ("metrics", "config", "model"):
            if not isinstance(data.get(key), dict):
                raise CompareError(f"{path}: a run record without '{key}' (damaged?)")
        return "run", data
    if schema.startswith(BENCH_SCHEMA_PREFIX):
        if not isinstance(data.get("points"), list):
            raise CompareError(f"{path}: a bench result without 'points' (damaged?)")
        return "bench", data
    raise CompareError(f"{path}: neither an llmtop run record nor a bench result "
                       f"(schema {schema or 'missing'})")


# ---- helpers ------------------------------------------------------------------------------

def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return b / a


def verdict(r: float | None, lower_is_better: bool) -> str:
    """'B 1.35x faster' style words for a ratio B/A."""
    if r is None or r <= 0:
        return ""
    if abs(r - 1) < 0.005:
        return "same"
    better = (r < 1) == lower_is_better
    factor = 1 / r if r < 1 else r
    if lower_is_better:
        return f"B {factor:.2f}x {'faster' if better else 'slower'}"
    return f"B {factor:.2f}x {'higher' if r > 1 else 'lower'}"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, x in enumerate(d):
            out.update(_flat(x, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def differences(a: dict[str, Any], b: dict[str, Any], sections: tuple[str, ...],
                skip: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(field, A's value, B's value) for every differing leaf under `sections`."""
    out = []
    for section in sections:
        fa, fb = _flat(a.get(section), f"{section}."), _flat(b.get(section), f"{section}.")
        for key in sorted(set(fa) | set(fb)):
            if any(s in key for s in skip):
                continue
            va, vb = fa.get(key), fb.get(key)
            if va != vb:
                out.append((key, va, vb))
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _table(rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < right_from or i == len(r) - 1 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- run records --------------------------------------------------------------------------

RUN_METRICS = [  # (label, path in record, lower is better)
    ("TTFT ms", ("metrics", "ttft_ms"), True),
    ("TPOT ms", ("metrics", "tpot_ms"), True),
    ("latency ms", ("metrics", "e2e_ms"), True),
    ("ITL mean ms", ("metrics", "itl", "mean"), True),
    ("ITL p50 ms", ("metrics", "itl", "p50"), True),
    ("ITL p90 ms", ("metrics", "itl", "p90"), True),
    ("ITL p99 ms", ("metrics", "itl", "p99"), True),
    ("tokens/s", ("metrics", "tokens_per_s"), False),
    ("prefill tok/s", ("metrics", "prefill_tokens_per_s"), False),
    ("decode tok/s", ("metrics", "decode_tokens_per_s"), False),
    ("decode % roofline", ("roofline", "decode_pct"), False),
    ("prefill % roofline", ("roofline", "prefill_pct"), False),
    ("achieved GB/s", ("roofline", "achieved_gb_s"), False),
]


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _tokens_guard(a: dict[str, Any], b: dict[str, Any]) -> str:
    ta = [t.get("id") for t in (a.get("tokens") or [[]])[0]]
    tb = [t.get("id") for t in (b.get("tokens") or [[]])[0]]
    k = first_divergence(ta, tb)
    if k is not None:
        return f"diverged at token {k}"
    if len(ta) != len(tb):
        return f"identical for {min(len(ta), len(tb))} tokens, then one run stopped"
    return f"identical ({len(ta)} tokens)"


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    diffs = differences(a, b, ("model", "config", "request", "versions", "ceilings", "machine"),
                        skip=("run_id",))
    rows = []
    for label, path, lower in RUN_METRICS:
        va, vb = _get(a, path), _get(b, path)
        if va is None and vb is None:
            continue
        r = ratio(va, vb)
        rows.append({"metric": label, "a": va, "b": vb, "ratio": r, "verdict": verdict(r, lower)})
    same_request = all(_get(a, ("request", k)) == _get(b, ("request", k))
                       for k in ("prompt", "prompt_len", "batch", "max_new_tokens", "sample", "seed"))
    return {"kind": "run", "differences": diffs, "metrics": rows,
            "same_request": same_request,
            "tokens": _tokens_guard(a, b) if same_request and not _get(a, ("request", "sample")) else None}


# ---- bench results --------------------------------------------------------------------------

def _point_key(p: dict[str, Any]) -> tuple:
    return (p["config"], p["tp"], p["prompt_len"], p["new_tokens"], p["batch"])


def compare_bench(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    diffs = differences(a, b, ("model", "versions", "gpus", "ceilings"))
    for key in ("hostname", "platform", "cpu", "cpu_count", "driver"):
        va, vb = (a.get("machine") or {}).get(key), (b.get("machine") or {}).get(key)
        if va != vb:
            diffs.append((f"machine.{key}", va, vb))
    pa = {_point_key(p): p for p in a["points"]}
    pb = {_point_key(p): p for p in b["points"]}
    rows = []
    for key in [k for k in pa if k in pb]:
        x, y = pa[key], pb[key]
        row = {"config": key[0], "tp": key[1], "prompt_len": key[2], "new_tokens": key[3],
               "batch": key[4], "status_a": x["status"], "status_b": y["status"]}
        for m in ("ttft_ms", "tpot_ms", "tokens_per_s"):
            row[f"{m}_a"], row[f"{m}_b"] = x.get(m), y.get(m)
            row[f"{m}_ratio"] = ratio(x.get(m), y.get(m))
        if x.get("opts") != y.get("opts"):
            row["opts_differ"] = True
        rows.append(row)
    return {"kind": "bench", "differences": diffs, "points": rows,
            "only_a": [list(k) for k in pa if k not in pb], "only_b": [list(k) for k in pb if k not in pa]}


# ---- text -----------------------------------------------------------------------------------

def _describe(kind: str, data: dict[str, Any]) -> str:
    model = data.get("model") or {}
    machine = data.get("machine") or {}
    gpus = machine.get("gpus") or []
    where = gpus[0]["name"] if gpus else (data.get("ceilings") or {}).get("device_name") or machine.get("cpu", "?")
    if kind == "run":
        opts = " ".join(f"{k}={v}" for k, v in (data["config"].get("opts") or {}).items())
        return f"{model.get('name', '?')} on {where} ({machine.get('hostname', '?')}), {opts}"
    return (f"{model.get('name', '?')} on {where} ({machine.get('hostname', '?')}), "
            f"{len(data['points'])} points, configurations: {', '.join(c['name'] for c in data.get('configs', []))}")


def render(result: dict[str, Any], a_path: str, b_path: str, a: dict[str, Any],
           b: dict[str, Any]) -> str:
    kind = result["kind"]
    lines = [f"A: {a_path}: {_describe(kind, a)}", f"B: {b_path}: {_describe(kind, b)}", ""]
    diffs = result["differences"]
    if diffs:
        lines.append("what differs:")
        lines += [f"  {k}: {_fmt(va)} -> {_fmt(vb)}" for k, va, vb in diffs]
    else:
        lines.append("what differs: nothing in model, configuration, machine or versions")
    lines.append("")
    if kind == "run":
        if not result["same_request"]:
            lines += ["warning: A and B answered different requests (see request.* above); "
                      "the ratios compare unlike runs", ""]
        rows = [["metric", "A", "B", "B/A", ""]]
        for r in result["metrics"]:
            rows.append([r["metric"], _fmt(r["a"]), _fmt(r["b"]),
                         f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-", r["verdict"]])
        lines.append(_table(rows))
        if result.get("tokens"):
            lines += ["", f"tokens: {result['tokens']}"]
    else:
        rows = [["config", "tp", "prompt", "new", "batch", "TTFT A", "TTFT B", "B/A",
                 "TPOT A", "TPOT B", "B/A", ""]]
        for r in result["points"]:
            words = []
            for m, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT")):
                v = verdict(r[f"{m}_ratio"], True)
                if v:
                    words.append(f"{name}: {v}")
            if r["status_a"] != "ok" or r["status_b"] != "ok":
                words.append(f"status {r['status_a']} / {r['status_b']}")
            if r.get("opts_differ"):
                words.append("options differ")
            rows.append([r["config"], str(r["tp"]), str(r["prompt_len"]), str(r["new_tokens"]),
                         str(r["batch"]), _fmt(r["ttft_ms_a"]), _fmt(r["ttft_ms_b"]),
                         f"{r['ttft_ms_ratio']:.3f}x" if r["ttft_ms_ratio"] is not None else "-",
                         _fmt(r["tpot_ms_a"]), _fmt(r["tpot_ms_b"]),
                         f"{r['tpot_ms_ratio']:.3f}x" if r["tpot_ms_ratio"] is not None else "-",
                         "; ".join(words)])
        if len(rows) > 1:
            lines.append(_table(rows, right_from=1))
        else:
            lines.append("no point was measured in both (same configuration name, tp, prompt, "
                         "new tokens and batch)")
        for side, key in (("A", "only_a"), ("B", "only_b")):
            if result[key]:
                lines.append(f"only in {side}: {len(result[key])} points")
    return "\n".join(lines)


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        kind_a, a = load_any(args.a)
        kind_b, b = load_any(args.b)
    except CompareError as e:
        print(f"llmtop: {e}", file=err)
        return 2
    if kind_a != kind_b:
        print(f"llmtop: {args.a} is {checks.KIND_WORDS[kind_a]} and {args.b} "
              f"{checks.KIND_WORDS[kind_b]}: compare like with like", file=err)
        return 2
    result = compare_runs(a, b) if kind_a == "run" else compare_bench(a, b)
    if getattr(args, "json", False):
        out.write(json.dumps({**result, "a": args.a, "b": args.b}, indent=1, default=str) + "\n")
    else:
        out.write(render(result, args.a, args.b, a, b) + "\n")
    return 0
