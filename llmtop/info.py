"""`llmtop info`: what this machine has, and which optimizations run here (and why not)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmtop.engine import catalogue


def collect(device: str) -> dict[str, Any]:
    """Versions, devices and the catalogue's availability for `device` (imports torch)."""
    import torch

    from llmtop.engine import record, spec, threads

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        embedded = str(spec.embedded_gguf())
    except spec.ModelSpecError as e:
        embedded = f"unavailable: {e}"
    return {
        "versions": record.versions(),
        "machine": record.machine(),
        "device": device,
        "embedded_model": embedded,
        "model_cache": str(spec.cache_dir()),
        "synthetic_shapes": list(spec.SYNTHETIC_SHAPES),
        "options": catalogue.as_dict(catalogue.availability(device)),
        "presets": catalogue.PRESETS,
        "engine_threads": _threads(threads, torch.get_num_threads()),
    }


def _threads(threads: Any, default: int) -> dict[str, Any]:
    """The engine's CPU threads headless and beside the dashboard, and why they differ."""
    try:
        request = threads.parse(threads.requested(None))
    except threads.ThreadsError as e:
        return {"error": str(e)}
    usable = threads.usable_cpus()
    out = {}
    for where, ui in (("headless", False), ("dashboard", True)):
        p = threads.plan(request, default, usable, ui)
        out[where] = {"threads": p.threads, "cpus": p.usable, "torch_default": p.default,
                      "reason": p.reason}
    return out


def _telemetry() -> tuple[dict[str, Any] | None, str]:
    """The profilers' report, read once; whatever goes wrong there is one line, never a
    traceback, and the rest of `llmtop info` still prints."""
    try:
        from llmtop.profilers import report

        info = report.info_dict()
        return info, report.render_info(info)
    except Exception as e:  # a vendor library failing in a way no backend foresaw
        return None, f"telemetry unavailable: {type(e).__name__}: {e}"


def render(data: dict[str, Any]) -> str:
    v = data["versions"]
    lines = ["llmtop " + v.get("llmtop", "?"),
             "versions  " + "  ".join(f"{k} {val}" for k, val in v.items() if val and k != "llmtop"),
             f"machine   {data['machine']['platform']}, {data['machine']['cpu_count']} CPUs"]
    for gpu in data["machine"]["gpus"]:
        lines.append(f"gpu {gpu['index']}     {gpu['name']}, {gpu['memory_bytes'] / 2**30:.0f} GiB, "
                     f"{gpu['sm_count']} SMs")
    if not data["machine"]["gpus"]:
        lines.append("gpu       none visible to torch: everything runs on the CPU")
    t = data.get("engine_threads", {})
    if "error" in t:
        lines.append(f"threads   {t['error']}")
    elif t:
        h, d = t["headless"], t["dashboard"]
        lines.append(f"threads   engine {h['threads']} of {h['cpus']} CPUs headless, {d['threads']} beside "
                     f"the dashboard" + (f": {d['reason']}" if d["reason"] else ""))
    lines += [f"embedded  {data['embedded_model']}", f"cache     {data['model_cache']}",
              "synthetic " + ", ".join("synthetic:" + s for s in data["synthetic_shapes"]),
              "", f"optimizations on {data['device']} (--opt AXIS=OPTION):"]
    for axis, options in data["options"].items():
        about = catalogue.AXIS_INFO[axis]
        lines.append(f"  {axis} · {about.help} (default {about.default}: {about.why_default})")
        for name, a in options.items():
            mark = "yes" if a["ok"] else "no "
            lines.append(f"    {mark} {name:<18} {a['reason'] or about.options[name]}")
    lines.append("presets (--preset NAME): " + "; ".join(
        f"{n}: " + " ".join(f"{k}={val}" for k, val in p.items()) for n, p in data["presets"].items()))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from llmtop import checks

    try:
        device = checks.device(args.device)
    except checks.CheckError as e:
        print(f"llmtop: {e}", file=sys.stderr)
        return 2
    data = collect(device)
    telemetry, text = _telemetry()
    if args.json:
        data["telemetry"] = telemetry
        print(json.dumps(data, indent=1))
    else:
        print(render(data))
        print()
        print(text)
    return 0
