"""The sweep: every point of a plan, measured through one engine process (EngineSession).

The engine is reconfigured between configurations; every point gets warm-up runs, then
--repeat measured runs whose per-token stamps give TTFT and TPOT. Each finished point goes to
points.jsonl at once (llmtop.bench_store). An out-of-memory point is recorded as OOM, larger
batches of the same series as skipped after it, and the sweep goes on.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TextIO

from llmtop.bench_plan import (BASELINE, POINTS_FILE, SCHEMA, BenchError, Plan, PointSpec,
                               batches_for, full_opts, point_key, rank_gpus)
from llmtop.bench_points import (baseline_key, compact_run, guard, point_line, series_key,
                                 summarize)
from llmtop.bench_store import PointStore, clean, done_keys
from llmtop.bench_telemetry import Telemetry, telemetry_gpus
from llmtop.engine import catalogue
from llmtop.engine.protocol import Configure, Generate
from llmtop.engine.session import EngineSession, Outcome

OOM_WORDS = ("out of memory", "outofmemory", "can't allocate memory", "cannot allocate memory",
             "not enough memory")


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


# ---- the sweep ------------------------------------------------------------------------------

def run_sweep(plan: Plan, out: Path, records: list[dict[str, Any]], err: TextIO,
              stall_s: float = 900.0, telemetry_on: bool = True) -> int:
    """Measures every point of `plan` not final in `records`; returns the exit code."""
    store = PointStore(out / POINTS_FILE)
    store.append({"type": "plan", "schema": SCHEMA, "unix": time.time(), "plan": asdict(plan),
                  "resumed": bool(records)})
    finished = _all_measured(plan, done_keys(records))
    if finished:
        store.close()
        msg(err, f"llmtop bench: all {finished} points of this sweep are measured, 0 to go")
        return 0
    sweep = Sweep(plan, out, records, store, err, stall_s, telemetry_on)
    interrupted = False
    try:
        sweep.run()
    except KeyboardInterrupt:
        interrupted = True
        # `timeout -s INT` signals the process and then its group: a second SIGINT must not
        # cut the clean-up short (the engine's shutdown, the reports); main() restores it
        ignore_sigint()
    finally:
        sweep.close()
    if interrupted:
        msg(err, f"llmtop bench: interrupted; what was measured is in {out / POINTS_FILE}; "
                 f"continue with: llmtop bench --out {out} --resume")
        return 130
    return 0


def _all_measured(plan: Plan, done: set[str]) -> int:
    """The number of points of a plan known without the engine (batches and configurations
    given) when all are measured; 0 otherwise: a finished sweep needs no engine at all."""
    if plan.batches is None or plan.default_configs:
        return 0
    keys = {point_key(c["name"], tp, p, n, b) for tp in plan.tps for c in plan.configs
            for p in plan.prompt_lens for n in plan.new_tokens for b in plan.batches}
    return len(keys) if keys <= done else 0


class Sweep:
    """One sweep's state: the engine session, what is measured, the baseline's ids per point
    (for the guard), where each series ran out of memory."""

    def __init__(self, plan: Plan, out: Path, records: list[dict[str, Any]], store: PointStore,
                 err: TextIO, stall_s: float, telemetry_on: bool) -> None:
        self.plan, self.store, self.err = plan, store, err
        self.done = done_keys(records)
        self.meta = next((r for r in records if r["type"] == "meta"), None)
        self.base_ids: dict[str, list[list[int]]] = {}
        self.oom_at: dict[str, int] = {}
        for r in records:
            if r["type"] != "point":
                continue
            if r.get("config") == BASELINE and r.get("status") == "ok" and r.get("runs"):
                self.base_ids[baseline_key(r)] = r["runs"][0]["ids"]
            if r.get("status") == "oom":
                self._ran_out(series_key(r), r["batch"])
        self.config_error: dict[tuple[str, int], Outcome] = {}
        self.progress: Progress | None = None
        self.session = EngineSession(str(out / "engine.log"), stall_s,
                                     on_progress=lambda kind, ev: _on_engine(self.progress, kind, ev))
        self.telemetry = Telemetry(telemetry_on, warn=lambda m: msg(err, m))  # forks: no thread yet
        self.device = plan.device
        self.by_name: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.telemetry.stop()
        self.session.close()
        self.store.close()

    def _ran_out(self, series: str, batch: int) -> None:
        self.oom_at[series] = min(self.oom_at.get(series, batch), batch)

    def run(self) -> None:
        self.session.start()
        todo, total = self._lay_out()
        self.progress = Progress(sum(self.cost(pt) for pt in todo), len(todo), self.err)
        if self.done:
            self.progress.message(f"resuming: {total - len(todo)} of {total} points already "
                                  f"measured, {len(todo)} to go")
        for n, pt in enumerate(todo):
            self.point(pt)
            if n == 0 and len(todo) > 1:
                self.progress.message(f"llmtop bench: estimate: about {self.progress.eta()} for the "
                                      f"other {len(todo) - 1} points (from the first point's pace)")

    def _lay_out(self) -> tuple[list[PointSpec], int]:
        """The points still to measure. The first configuration tells the resolved device, so
        the default batches and what the device can run are known before the plan is laid out."""
        plan = self.plan
        configs = list(plan.configs)
        probe = Configure(plan.model, plan.device, plan.dtype,
                          full_opts(configs[0]["opts"], plan.dtype), plan.tps[0],
                          rank_gpus(plan, plan.tps[0]))
        msg(self.err, f"llmtop bench: starting the engine and loading {plan.model} ...")
        first = self.session.configure(probe)
        if first.error_kind and configs[0]["name"] == BASELINE:
            raise BenchError(f"the baseline configuration does not run: {first.message}")
        self.device = applied(self.session).get("device", plan.device)
        if plan.default_configs and self.session.device_info is not None:
            configs, dropped = _runnable(configs, self.session.device_info.options, plan.dtype)
            for name, why in dropped:
                self.store.append({"type": "note", "config": name, "text": f"not run: {why}"})
        self.by_name = {c["name"]: c for c in configs}
        points = [PointSpec(c["name"], tp, p, n, b) for tp in plan.tps for c in configs
                  for p in plan.prompt_lens for n in plan.new_tokens
                  for b in batches_for(plan, self.device)]
        return [pt for pt in points if pt.key not in self.done], len(points)

    def run_tokens(self, pt: PointSpec, warm: bool) -> int:
        """New tokens of one run: a warm-up is shorter, except with a static cache, whose
        length (prompt + new tokens) must match the measured runs' or it recompiles."""
        plan = self.plan
        static = full_opts(self.by_name[pt.config]["opts"], plan.dtype).get("kv") == "static"
        return pt.new_tokens if not warm or static else min(pt.new_tokens, plan.warmup_tokens)

    def cost(self, pt: PointSpec) -> int:
        """A point's generated steps: progress counts them, a fair proxy of time."""
        return self.plan.warmup * self.run_tokens(pt, True) + self.plan.repeat * self.run_tokens(pt, False)

    def _base(self, pt: PointSpec) -> dict[str, Any]:
        plan = self.plan
        return {"type": "point", "key": pt.key, **asdict(pt),
                "opts": full_opts(self.by_name[pt.config]["opts"], plan.dtype), "model": plan.model,
                "device": self.device, "repeat": plan.repeat, "warmup": plan.warmup,
                "unix": time.time()}

    def _not_measured(self, pt: PointSpec, base: dict[str, Any], status: str, error: str,
                      shown: str) -> None:
        self.store.append({**base, "status": status, "runs": [], "error": error})
        self.progress.advance(self.cost(pt))
        self.progress.point_done(pt, shown)

    def point(self, pt: PointSpec) -> None:
        """Configures, warms up and measures one point; appends its record."""
        base = self._base(pt)
        series = series_key(base)
        if series in self.oom_at and pt.batch > self.oom_at[series]:
            why = f"batch {self.oom_at[series]} ran out of memory"
            return self._not_measured(pt, base, "skipped", why, f"skipped ({why})")
        self.progress.set(pt.label(), "configuring")
        outcome = self._configure(pt, base["opts"])
        if outcome.error_kind:
            status = "oom" if _is_oom(outcome) else "unavailable" if outcome.error_kind == "config" else "error"
            return self._not_measured(pt, base, status, outcome.message, f"{status}: {outcome.message}")
        point_base = self.progress.done
        status, error, runs, collectives, rec = self._measure(pt)
        self.progress.done = self.progress.run_base = point_base + self.cost(pt)
        point = {**base, "status": status, "runs": runs if status == "ok" else [],
                 "error": error, "unix": time.time()}
        if status == "ok":
            self._figures(point, pt, runs, rec, collectives)
        elif status == "oom":
            self._ran_out(series, pt.batch)
        self.store.append(clean(point))
        self.progress.point_done(pt, point_line(point) if status == "ok" else f"{status.upper()}: {error}")

    def _configure(self, pt: PointSpec, opts: dict[str, str]) -> Outcome:
        """The engine configured for `pt`; a configuration that failed once is not retried."""
        outcome = self.config_error.get((pt.config, pt.tp))
        if outcome is None:
            plan = self.plan
            want = Configure(plan.model, plan.device, plan.dtype, opts, pt.tp, rank_gpus(plan, pt.tp))
            outcome = self.session.configure(want)
            if outcome.error_kind:
                self.config_error[(pt.config, pt.tp)] = outcome
        return outcome

    def _measure(self, pt: PointSpec) -> tuple[str, str, list[dict[str, Any]], dict[str, float], Any]:
        """The point's warm-up and measured runs: (status, error, runs, collectives, last record)."""
        plan, progress = self.plan, self.progress
        runs: list[dict[str, Any]] = []
        collectives: dict[str, float] = {}
        rec = None
        for i in range(plan.warmup + plan.repeat):
            warm = i < plan.warmup
            new = self.run_tokens(pt, warm)
            progress.tokens_expected = new
            progress.set(pt.label(), f"warm-up {i + 1}/{plan.warmup}" if warm
                         else f"run {i - plan.warmup + 1}/{plan.repeat}")
            # tensor parallel: the first warm-up profiles a few decode steps for the share
            # spent in collectives, so the measured runs never pay for the profiler
            profile = min(4, new - 1) if warm and i == 0 and pt.tp > 1 else 0
            req = Generate(prompt_len=pt.prompt_len, batch=pt.batch, max_new_tokens=new,
                           ignore_eos=plan.ignore_eos, seed=plan.seed, profile_steps=profile)
            res = self.session.generate(req)
            progress.run_base += new
            progress.done = progress.run_base
            if res.error_kind:
                return "oom" if _is_oom(res) else "error", res.message, runs, collectives, rec
            rec = res.record
            if self.meta is None:
                self.meta = _meta(rec, self.session, self.telemetry)
                self.store.append(self.meta)
            if warm:
                if res.profile is not None:
                    collectives = {k: res.profile[k] for k in (
                        "collective_ms", "collective_pct", "step_ms", "busy_ms")}
                continue
            runs.append(self._compact(rec, pt, res.events))
        return "ok", "", runs, collectives, rec

    def _compact(self, rec: dict[str, Any], pt: PointSpec, events: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = rec["metrics"]["n_tokens"] * pt.batch
        stamps = [t["t_ns"] for t in rec["tokens"][0]] if rec["tokens"] else []
        tele = self.telemetry.summary(rec["start_ns"], stamps[-1] if stamps else rec["start_ns"],
                                      telemetry_gpus(rec, self.device, pt.tp), tokens)
        return compact_run(rec, tele, events)

    def _figures(self, point: dict[str, Any], pt: PointSpec, runs: list[dict[str, Any]],
                 rec: dict[str, Any], collectives: dict[str, float]) -> None:
        """A measured point's figures, where it ran, and its ids against the baseline's."""
        point["applied"] = applied(self.session)
        point["gpus"] = rec["model"].get("gpus") or []
        point["gpu_choice"] = rec["model"].get("gpu_choice", "")
        if collectives:
            point["profiled_step"] = collectives
        point.update(summarize(runs, pt.batch, pt.prompt_len, self.meta, pt.tp))
        if pt.config == BASELINE:
            self.base_ids[baseline_key(point)] = runs[0]["ids"]
            point["guard"] = "baseline"
        else:
            point["guard"] = guard(runs[0]["ids"], self.base_ids.get(baseline_key(point)))


def applied(session: EngineSession) -> dict[str, Any]:
    """What the engine says it is configured with, as the plain dict the records keep (the
    session's ConfigApplied config, a Configure dataclass or, from older engines, a dict)."""
    cfg = session.applied
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    return dict(cfg or {})


def ignore_sigint() -> None:
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
    return clean({
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


def msg(err: TextIO, text: str) -> None:
    err.write(text + "\n")
    err.flush()
