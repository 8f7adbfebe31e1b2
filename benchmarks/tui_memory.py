"""What grows in the dashboard's UI process, found without an engine (issue 14.10).

Runs the real LlmtopApp in a Textual pilot (`run_test()`) and feeds it synthetic engine events
at high speed: hundreds of runs (RunStarted, Tokens, RunDone with a full record), a
configuration toggle every few runs (ConfigApplied, which adds a marker and a comparison row),
engine events, guard results, notifications, telemetry ticks, command palette toggles, theme
changes and resizes, with a session file recorded as the real dashboard does. Every run is
drawn (a redraw and a pause per run, and one mid-run).

Prints the RSS every 100 runs and, between two tracemalloc snapshots (run --from and run
--to), the allocation sites that grew most:

    .venv/bin/python benchmarks/tui_memory.py [--runs 1000] [--from 200] [--tokens 48]

Not a test: it prints figures and leaves the judgement to the reader. tracemalloc slows the
app ~2x; --no-trace gives the RSS alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import psutil

from llmtop.engine import catalogue
from llmtop.engine import metrics as m
from llmtop.engine.protocol import (ConfigApplied, Configure, EngineEvent, GuardResult, RunDone,
                                    RunStarted, Status, Token)
from llmtop.tui.app import LlmtopApp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.tui import fixed_session as fx  # noqa: E402  (the same model, device and telemetry)

# the configurations cycled through: each toggle is one ConfigApplied, as a palette choice gives
TOGGLES = [{}, {"attention": "eager"}, {"kv": "static"}, {"dtype": "fp32"}, {"attention": "flash"},
           {"compile": "layers"}]
WORDS = [" The", " capital", " of", " France", " is", " Paris", ".", " It", " has", " a",
         " population", " of", " about", " two", " million", " people"]
SIZES = [(160, 48), (100, 30), (80, 24)]


class Feeder:
    """Builds the events of run after run, with stamps that advance like a real clock."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.t = 10_000_000_000
        self.run_id = 0

    def config(self, n: int) -> Configure:
        o = {**catalogue.DEFAULTS, **TOGGLES[n % len(TOGGLES)]}
        return Configure("embedded", "cpu", o.get("dtype", "bf16"), o, 1)

    def run(self, cfg: Configure, batch: int) -> tuple[list, list]:
        """(events up to the middle of the run, the rest): the run's events in two halves."""
        self.run_id += 1
        rid, t0 = self.run_id, self.t
        # every run a new text (ids and pieces vary): caches keyed by content see new keys
        texts = [WORDS[(rid * 7 + i * 3) % len(WORDS)] + ("" if i % 5 else f" {rid}")
                 for i in range(self.tokens)]
        ids = [(rid * 131 + i * 17) % 49152 for i in range(self.tokens)]
        stamps, t = [], t0 + 90_000_000 + (rid % 13) * 1_000_000
        for i in range(self.tokens):
            t += 0 if i == 0 else 40_000_000 + ((rid + i) % 9) * 700_000
            stamps.append(t)
        self.t = t + 50_000_000
        prompt = f"Question {rid}: what is the capital of France?"
        events: list = [RunStarted(rid, [prompt] * batch, 12, batch, self.tokens, t0),
                        Status("generating", f"run {rid}")]
        events += [Token(rid, i, [ids[i]] * batch, [texts[i]] * batch, s)
                   for i, s in enumerate(stamps)]
        rm = m.run_metrics(t0, stamps, batch, 12)
        roof = m.roofline(rm, fx.MODEL.weight_bytes, fx.MODEL.params, fx.MODEL.kv_bytes_per_token,
                          fx.DEVICE.mem_bw_gb_s, fx.DEVICE.peak_tflops)
        record = {"schema": "llmtop.run/1", "model": asdict(fx.MODEL), "config": asdict(cfg),
                  "prompts": [prompt] * batch,
                  "tokens": [[{"index": i, "id": ids[i], "text": x, "t_ns": s}
                              for i, (x, s) in enumerate(zip(texts, stamps))]] * batch,
                  "metrics": rm.to_dict(), "roofline": asdict(roof),
                  "guard": {"status": "identical" if rid % 3 else "not_checked"}, "stopped": "",
                  "ceilings": {"mem_bw_gb_s": fx.DEVICE.mem_bw_gb_s,
                               "peak_tflops": fx.DEVICE.peak_tflops}}
        rest = events[len(events) // 2:] + [RunDone(rid, record), Status("ready", "")]
        if rid % 4 == 0:
            rest.insert(-2, EngineEvent("recompile", f"Recompiling forward (run {rid})", stamps[5]))
        return events[:len(events) // 2], rest


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> None:
    stats = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"\ntracemalloc: {total / 2**20:+.2f} MB traced between the snapshots; "
          f"top {n} sites by size diff")
    for s in stats[:n]:
        frames = [f for f in s.traceback if "tracemalloc" not in f.filename]
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in frames[-1:-5:-1])
        print(f"  {s.size_diff / 1024:+9.1f} KiB {s.count_diff:+7d} blocks  {where}")


def type_counts() -> Counter:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def type_growth(before: Counter, after: Counter, n: int) -> None:
    grown = sorted(((after[k] - before[k], k) for k in after if after[k] > before[k]), reverse=True)
    print(f"\nobjects the gc tracks: {sum(before.values())} -> {sum(after.values())}; "
          f"the types that grew most")
    for diff, name in grown[:n]:
        print(f"  {diff:+8d}  {name} ({before[name]} -> {after[name]})")


def _short(path: str) -> str:
    for mark in ("site-packages/", "/llmtop/", "/soak/"):
        if mark in path:
            return path.split(mark, 1)[1]
    return os.path.basename(path)


async def soak(args: argparse.Namespace, record: Path) -> None:
    app = LlmtopApp(start_engine=False, telemetry=False, record=record)
    feeder = Feeder(args.tokens)
    tele = fx.telemetry()
    snap = types = None
    async with app.run_test(size=SIZES[0]) as pilot:
        for ev in [Status("ready", "waiting for a configuration"), fx.MODEL, fx.DEVICE,
                   ConfigApplied(feeder.config(0), "loaded", 2.4), Status("ready", "")]:
            app.handle_event(ev)
        await pilot.pause()
        t0 = time.monotonic()
        n_toggle = 0
        for run in range(1, args.runs + 1):
            if run % 5 == 0:    # a toggle every 5 runs, as every ~15 s in the tmux soak
                n_toggle += 1
                if n_toggle % 10 == 0:   # through the palette, as a person does
                    await pilot.press("ctrl+p")
                    await pilot.pause()
                    await pilot.press(*"Optimization: kv = dynamic", "enter")
                    await pilot.pause()
                app.handle_event(ConfigApplied(feeder.config(n_toggle), "in place", 0.01))
                app.handle_event(Status("ready", ""))
                app.notify(f"attention toggled ({n_toggle})", timeout=0.5)
            if run % 7 == 0:
                app.handle_event(GuardResult("identical" if run % 14 else "diverged",
                                             None if run % 14 else 3, 0.0, 16, "eager"))
            if run % 50 == 0:
                await pilot.press("t")
            if run % 30 == 0:
                await pilot.resize_terminal(*SIZES[(run // 30) % len(SIZES)])
            first, rest = feeder.run(app.model.session.config or feeder.config(0),
                                     2 if run % 11 == 0 else 1)
            for ev in first:
                app.handle_event(ev)
            app.redraw_all()
            await pilot.pause()
            for ev in rest:
                app.handle_event(ev)
            for tick in tele["ticks"]:
                app.telemetry.add_tick(tick, 3.0)
            app.changed("telemetry")
            app.redraw_all()
            await pilot.pause()
            if run == args.snap_from:
                gc.collect()
                types = type_counts()
                if args.trace:   # traced from here on: the runs before go at full speed
                    tracemalloc.start(args.frames)
                    snap = tracemalloc.take_snapshot()
            if run % args.every == 0:
                gc.collect()
                s = app.model.session
                print(f"run {run:5d}  RSS {rss_mb():7.1f} MB  traced "
                      f"{tracemalloc.get_traced_memory()[0] / 2**20:7.2f} MB  runs kept "
                      f"{len(s.runs)}  rows {len(s.rows)}  markers {len(s.markers)}  "
                      f"gc objects {len(gc.get_objects())}  screens {len(app.screen_stack)}  "
                      f"({time.monotonic() - t0:.0f} s)",
                      flush=True)
        gc.collect()
        if types is not None:
            type_growth(types, type_counts(), args.top)
        if snap is not None:
            top_growth(snap, tracemalloc.take_snapshot(), args.top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--from", dest="snap_from", type=int, default=200,
                    help="run of the first snapshot (tracemalloc starts there; the second: the "
                         "last run)")
    ap.add_argument("--tokens", type=int, default=48, help="tokens per run")
    ap.add_argument("--top", type=int, default=25, help="allocation sites listed")
    ap.add_argument("--every", type=int, default=100, help="runs between RSS lines")
    ap.add_argument("--frames", type=int, default=6, help="traceback depth traced")
    ap.add_argument("--no-trace", dest="trace", action="store_false", help="RSS only")
    args = ap.parse_args()
    os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="llmtop-mem-config-"))
    with tempfile.TemporaryDirectory(prefix="llmtop-mem-") as tmp:
        asyncio.run(soak(args, Path(tmp) / "session.jsonl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
