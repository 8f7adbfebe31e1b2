"""The study's two charts of a sweep, prefill latency (TTFT) and decode latency (TPOT) against
batch size, one line per configuration: in the terminal (plotext) and as PNG (matplotlib,
`pip install 'llmtop-profiler[plots]'`). Neither library is needed for the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtop import DISTRIBUTION

MARKERS = ["*", "x", "+", "o", "#", "@", "%", "&", "$", "="]


def title(results: dict[str, Any]) -> str:
    model = results.get("model") or {}
    gpus = results.get("gpus") or []
    where = gpus[0]["name"] + (f" x{len(gpus)}" if len(gpus) > 1 else "") if gpus else \
        (results.get("ceilings") or {}).get("device_name") or (results.get("machine") or {}).get("cpu", "?")
    if model.get("server"):   # bench --endpoint: a running server
        where = f"{model['server']} at {model['source']}"
    synth = " (synthetic weights)" if model.get("synthetic") else ""
    return f"llmtop bench: {model.get('name', '?')}{synth} on {where}"




def groups(results: dict[str, Any]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    """Points per (prompt, new tokens): one pair of charts each. Tensor-parallel sizes share a
    chart, one line per configuration and size (the study's TP=4 vs TP=8 comparison)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in results["points"]:
        groups.setdefault((p["prompt_len"], p["new_tokens"]), []).append(p)
    return sorted(groups.items())


def _tp_note(points: list[dict[str, Any]]) -> str:
    sizes = {p["tp"] for p in points}
    return f", tp {sizes.pop()}" if len(sizes) == 1 and max(sizes) > 1 else ""


def _series(points: list[dict[str, Any]], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    several_tp = len({p["tp"] for p in points}) > 1
    out: dict[str, tuple[list[int], list[float]]] = {}
    for p in points:
        if p["status"] == "ok" and p.get(metric) is not None:
            name = f"{p['config']} tp{p['tp']}" if several_tp else p["config"]
            xs, ys = out.setdefault(name, ([], []))
            xs.append(p["batch"])
            ys.append(p[metric])
    return out


CHARTS = (("ttft_ms", "prefill", "Prefill latency (TTFT)"), ("tpot_ms", "decode", "Decode latency (TPOT)"))


def chart_name(kind: str, group: tuple, several: bool) -> str:
    plen, new = group
    return f"{kind}_vs_batch" + (f"_p{plen}_n{new}" if several else "") + ".png"


def terminal_charts(results: dict[str, Any], width: int = 78, height: int = 18,
                    color: bool = False) -> list[str]:
    """The study's two charts per (tp, prompt, new tokens) group, drawn with plotext; [] when
    plotext is missing or there is nothing to draw."""
    try:
        import plotext as plt
    except ImportError:
        return []
    out = []
    for group, points in groups(results):
        plen, new = group
        for metric, _, heading in CHARTS:
            series = _series(points, metric)
            if not series:
                continue
            plt.clear_figure()
            plt.plotsize(width, height)
            for i, (name, (xs, ys)) in enumerate(series.items()):
                plt.plot(xs, ys, label=name, marker=MARKERS[i % len(MARKERS)] if not color else "braille")
            batches = sorted({x for xs, _ in series.values() for x in xs})
            plt.xticks(batches, [str(b) for b in batches])
            plt.title(f"{heading} vs batch, prompt {plen}, {new} new tokens" + _tp_note(points))
            plt.xlabel("batch size")
            plt.ylabel("ms")
            text = plt.build()
            out.append(text if color else plt.uncolorize(text))
    plt.clear_figure()
    return out


PLOTS_HINT = f"pip install '{DISTRIBUTION}[plots]'"


def png_charts(results: dict[str, Any], folder: Path) -> tuple[list[Path], str | None]:
    """The two charts per group as PNG files; ([], why) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], f"PNG charts need matplotlib: {PLOTS_HINT}"
    sets = groups(results)
    paths = []
    for group, points in sets:
        plen, new = group
        for metric, kind, heading in CHARTS:
            series = _series(points, metric)
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
            for i, (name, (xs, ys)) in enumerate(series.items()):
                ax.plot(xs, ys, marker="os^vD<>phx"[i % 10], label=name)
            batches = sorted({x for xs, _ in series.values() for x in xs})
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_xlabel("batch size")
            ax.set_ylabel(f"{'TTFT' if metric == 'ttft_ms' else 'TPOT'} (ms)")
            ax.set_title(f"{heading} vs batch\n{title(results)[len('llmtop bench: '):]}, prompt {plen}, "
                         f"{new} new tokens" + _tp_note(points), fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = folder / chart_name(kind, group, len(sets) > 1)
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
    return paths, None
