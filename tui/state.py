"""What the dashboard knows, as plain Python: runs, live metrics, the comparison, markers.

No Textual here, so the bookkeeping (live TTFT/TPOT, the per-configuration comparison, the
correctness guard, the plot's series) is tested without a terminal. The app feeds engine
events in; widgets read from it when they redraw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop.engine import catalogue
from llmtop.engine import metrics as m
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, ModelInfo, RunDone, RunStarted,
                             Status, Token)

# The study's prompt first; the engine loops over these unless the user gives a prompt.
PROMPT_SET: tuple[str, ...] = (
    "The largest continent is",
    "The three primary colors are",
    "Water boils at sea level at a temperature of",
    "The theory of relativity was developed by",
    "A good way to learn a new programming language is",
)

# axis order of the badges and the configuration labels
AXIS_ORDER = tuple(catalogue.AXES)

# a token slower than this many times the run's median step stands out
SLOW_RATIO = 1.3
SPIKE_RATIO = 2.0

MAX_RUNS_KEPT = 200      # finished runs the session keeps (their records go to a saved session)
PLOT_WINDOW = 400        # steps the latency plot shows


def config_label(opts: dict[str, str], batch: int = 1, defaults: dict[str, str] | None = None,
                 tp: int = 1) -> str:
    """A configuration in a few words: the options that differ from the defaults, the
    tensor-parallel size (when > 1) and the batch."""
    from llmtop.engine.catalogue import DEFAULTS

    base = DEFAULTS if defaults is None else defaults
    parts = [f"{a}={opts[a]}" for a in AXIS_ORDER if a in opts and opts[a] != base.get(a)]
    if tp > 1:
        parts.append(f"tp={tp}")
    label = " ".join(parts) or "defaults"
    return label + (f" bs={batch}" if batch != 1 else "")


def config_key(opts: dict[str, str], batch: int, prompt_len: int | None, tp: int = 1) -> str:
    """A comparison row's identity: runs of another TP size are another configuration."""
    shape = f"len{prompt_len}" if prompt_len else "text"
    ranks = f"|tp{tp}" if tp > 1 else ""
    return "|".join(f"{a}={opts.get(a, '')}" for a in AXIS_ORDER) + f"{ranks}|bs{batch}|{shape}"


def latency_class(latency_ms: float, median_ms: float) -> str:
    """ok / slow / spike for one decode step against the run's median step."""
    if not median_ms or math.isnan(median_ms) or median_ms <= 0:
        return "ok"
    ratio = latency_ms / median_ms
    if ratio >= SPIKE_RATIO:
        return "spike"
    if ratio >= SLOW_RATIO:
        return "slow"
    return "ok"


@dataclass
class Run:
    """One run as it streams, and its engine record once done."""

    run_id: int
    prompt: str
    prompt_tokens: int
    batch: int
    max_new_tokens: int
    t_start_ns: int
    opts: dict[str, str]
    key: str
    sample: bool = False
    tp: int = 1
    first_step: int = 0              # global step number of this run's first token (plot x)
    stamps: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)      # request 0
    texts: list[str] = field(default_factory=list)    # request 0
    record: dict[str, Any] | None = None
    error: str = ""

    @property
    def done(self) -> bool:
        return self.record is not None or bool(self.error)

    def latencies_ms(self) -> list[float]:
        """Per token: the first is TTFT, the rest are the gaps (ITL)."""
        if not self.stamps:
            return []
        out = [(self.stamps[0] - self.t_start_ns) / 1e6]
        out += [(b - a) / 1e6 for a, b in zip(self.stamps, self.stamps[1:])]
        return out

    def metrics(self) -> dict[str, Any] | None:
        """The engine's metrics once done; meanwhile the same formulas over the stamps so far."""
        if self.record is not None:
            return self.record.get("metrics")
        if not self.stamps:
            return None
        return m.run_metrics(self.t_start_ns, self.stamps, self.batch, self.prompt_tokens).to_dict()


@dataclass
class Marker:
    step: int      # global step the marker sits before
    kind: str      # config | recompile | capture | tuning | phase ...
    label: str


@dataclass
class Row:
    """One configuration in the comparison table."""

    key: str
    label: str
    opts: dict[str, str]
    batch: int
    runs: list[Run] = field(default_factory=list)

    def _mean(self, name: str) -> float:
        vals = [r.record["metrics"][name] for r in self.runs
                if r.record and not math.isnan(r.record["metrics"].get(name, math.nan))]
        return sum(vals) / len(vals) if vals else math.nan

    @property
    def ttft_ms(self) -> float:
        return self._mean("ttft_ms")

    @property
    def tpot_ms(self) -> float:
        return self._mean("tpot_ms")

    @property
    def tokens_per_s(self) -> float:
        return self._mean("decode_tokens_per_s")


class Session:
    """Everything measured since the dashboard started (or the history was cleared)."""

    def __init__(self) -> None:
        self.model: ModelInfo | None = None
        self.device: DeviceInfo | None = None
        self.config: Configure | None = None      # what the engine runs now (ConfigApplied)
        self.status = Status("starting", "starting the engine")
        self.guard_result: Any = None   # the engine's latest GuardResult (check prompt vs baseline)
        self.clear()

    def clear(self) -> None:
        keep = getattr(self, "current", None)
        self.runs: list[Run] = []
        self.rows: dict[str, Row] = {}
        self.baseline: str | None = None
        self.markers: list[Marker] = []
        self.steps = 0
        self.current: Run | None = keep if keep is not None and not keep.done else None
        if self.current is not None:
            self.runs.append(self.current)
            self.current.first_step = 0
            self.steps = len(self.current.stamps)
        self.version = getattr(self, "version", 0) + 1

    # ---- events ---------------------------------------------------------------------------

    def on_status(self, ev: Status) -> None:
        self.status = ev

    def on_guard(self, ev: Any) -> None:
        self.guard_result = ev
        self.version += 1

    def on_model(self, ev: ModelInfo) -> None:
        self.model = ev

    def on_device(self, ev: DeviceInfo) -> None:
        self.device = ev

    def on_config(self, ev: ConfigApplied) -> None:
        old = self.config
        self.config = ev.config
        if old is not None and (old.opts, old.tp) != (ev.config.opts, ev.config.tp):
            changed = [f"{a}={v}" for a, v in ev.config.opts.items() if old.opts.get(a) != v]
            if old.tp != ev.config.tp:
                changed.append(f"tp={ev.config.tp}")
            self.markers.append(Marker(self.steps, "config", " ".join(changed) or ev.how))
        elif old is not None and ev.how == "loaded" and old != ev.config:
            self.markers.append(Marker(self.steps, "config", "reloaded"))
        self.version += 1

    def on_engine_event(self, ev: EngineEvent) -> None:
        """Recompiles, graph captures, tuning: placed at the step that was running then."""
        step = self.steps
        run = self.current
        if run is not None and run.stamps:
            before = sum(1 for t in run.stamps if t <= ev.t_ns)
            step = run.first_step + before
        self.markers.append(Marker(step, ev.kind, ev.detail or ev.kind))
        self.version += 1

    def on_run_started(self, ev: RunStarted, sample: bool = False, prompt_len: int | None = None) -> Run:
        opts = dict(self.config.opts) if self.config else {}
        tp = self.config.tp if self.config else 1
        run = Run(ev.run_id, ev.prompts[0] if ev.prompts else "", ev.prompt_tokens, ev.batch,
                  ev.max_new_tokens, ev.t_start_ns, opts, config_key(opts, ev.batch, prompt_len, tp),
                  sample=sample, tp=tp, first_step=self.steps)
        self.current = run
        self.runs.append(run)
        if len(self.runs) > MAX_RUNS_KEPT:
            del self.runs[0]
        self.version += 1
        return run

    def on_token(self, ev: Token) -> bool:
        run = self.current
        if run is None or run.run_id != ev.run_id:
            return False
        run.stamps.append(ev.t_ns)
        if ev.ids:
            run.ids.append(ev.ids[0])
            run.texts.append(ev.texts[0] if ev.texts else "")
        self.steps += 1
        self.version += 1
        return True

    def on_run_done(self, ev: RunDone) -> Run | None:
        run = self.current if self.current and self.current.run_id == ev.run_id else None
        if run is None:
            return None
        run.record = ev.record
        # the record's stamps are the truth; the live ones were the same numbers, kept as is
        self.current = None
        if not ev.record.get("stopped") or ev.record.get("stopped") == "stop":
            self._add_to_row(run)
        self.version += 1
        return run

    def on_run_error(self, message: str) -> None:
        if self.current is not None:
            self.current.error = message
            self.current = None
            self.version += 1

    # ---- comparison -------------------------------------------------------------------------

    def _add_to_row(self, run: Run) -> None:
        row = self.rows.get(run.key)
        if row is None:
            row = self.rows[run.key] = Row(run.key, config_label(run.opts, run.batch, tp=run.tp),
                                           run.opts, run.batch)
        row.runs.append(run)
        if self.baseline is None:
            self.baseline = run.key

    def set_baseline(self, key: str) -> None:
        if key in self.rows:
            self.baseline = key
            self.version += 1

    def speedup(self, row: Row) -> float:
        """Baseline TPOT over this row's: above 1 is faster decode than the baseline."""
        base = self.rows.get(self.baseline or "")
        if base is None or not row.tpot_ms or math.isnan(row.tpot_ms):
            return math.nan
        return base.tpot_ms / row.tpot_ms

    def guard(self, row: Row) -> str:
        """identical / diverged at k, against the baseline's greedy tokens for the same prompt.

        An engine-side guard in the record (status identical or diverged) wins over ours.
        """
        engine = [r.record.get("guard", {}) for r in row.runs if r.record]
        engine = [g for g in engine if g.get("status") in ("identical", "diverged")]
        if engine:
            bad = [g for g in engine if g["status"] == "diverged"]
            if bad:
                at = min((g.get("diverged_at") or 0) for g in bad)
                return f"diverged at {at} (engine guard)"
            return f"identical (engine guard, {engine[0].get('tokens', '?')} tokens)"
        if row.key == self.baseline:
            return "baseline"
        base = self.rows.get(self.baseline or "")
        if base is None:
            return "—"
        if all(r.sample for r in row.runs):
            return "sampled: n/a"
        refs = {r.prompt: r.ids for r in base.runs if not r.sample and r.ids}
        compared, first_bad = 0, None
        for r in row.runs:
            ref = refs.get(r.prompt)
            if ref is None or r.sample or r.batch != base.batch:
                continue
            compared += 1
            k = m.first_divergence(ref, r.ids)
            if k is not None and (first_bad is None or k < first_bad):
                first_bad = k
        if not compared:
            return "no common prompt yet"
        if first_bad is not None:
            return f"diverged at {first_bad}"
        return f"identical ({compared})"

    # ---- what widgets show ------------------------------------------------------------------

    def current_or_last(self) -> Run | None:
        if self.current is not None and self.current.stamps:
            return self.current
        for run in reversed(self.runs):
            if run.stamps:
                return run
        return None

    def session_metrics(self, key: str | None) -> dict[str, Any] | None:
        """Over every finished run of one configuration: means, and percentiles of all gaps."""
        row = self.rows.get(key or "")
        if row is None or not row.runs:
            return None
        recs = [r.record for r in row.runs if r.record]
        if not recs:
            return None
        itl = [g for rec in recs for g in rec["metrics"]["itl_ms"]]

        def mean(name: str, where: str = "metrics") -> float:
            vals = [rec[where][name] for rec in recs if rec.get(where) and
                    rec[where].get(name) is not None and not math.isnan(rec[where][name])]
            return sum(vals) / len(vals) if vals else math.nan

        out = {k: mean(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s",
                                    "decode_tokens_per_s", "prefill_tokens_per_s")}
        out["itl"] = asdict(m.Summary.of(itl))
        out["n_tokens"] = sum(rec["metrics"]["n_tokens"] for rec in recs)
        out["runs"] = len(recs)
        out["roofline"] = {k: mean(k, "roofline") for k in
                           ("decode_pct", "prefill_pct", "achieved_gb_s", "decode_floor_ms",
                            "prefill_floor_ms")}
        return out

    def live_roofline(self, run: Run) -> dict[str, Any] | None:
        """The record's roofline once done; meanwhile the same formula over the live stamps."""
        if run.record is not None:
            return run.record.get("roofline")
        if self.model is None or self.device is None or len(run.stamps) < 2:
            return None
        rm = m.run_metrics(run.t_start_ns, run.stamps, run.batch, run.prompt_tokens)
        return asdict(m.roofline(rm, self.model.weight_bytes, self.model.params,
                                 self.model.kv_bytes_per_token, self.device.mem_bw_gb_s,
                                 self.device.peak_tflops, ranks=run.tp))

    def plot_series(self, window: int = PLOT_WINDOW) -> tuple[list[int], list[float], list[int], list[float]]:
        """(x, decode step ms) and (x, TTFT ms) over the last `window` global steps."""
        xs: list[int] = []
        ys: list[float] = []
        tx: list[int] = []
        ty: list[float] = []
        lo = self.steps - window
        for run in self.runs:
            if run.first_step + len(run.stamps) <= lo:
                continue
            for i, lat in enumerate(run.latencies_ms()):
                x = run.first_step + i
                if x < lo:
                    continue
                if i == 0:
                    tx.append(x)
                    ty.append(lat)
                else:
                    xs.append(x)
                    ys.append(lat)
        return xs, ys, tx, ty

    def export(self) -> dict[str, Any]:
        """The session as JSON: every record, the comparison, the markers."""
        return {
            "schema": "llmtop.session/1",
            "model": asdict(self.model) if self.model else None,
            "device": asdict(self.device) if self.device else None,
            "config": asdict(self.config) if self.config else None,
            "runs": [r.record for r in self.runs if r.record is not None],
            "comparison": [
                {"configuration": row.label, "opts": row.opts, "batch": row.batch,
                 "runs": len(row.runs), "ttft_ms": row.ttft_ms, "tpot_ms": row.tpot_ms,
                 "tokens_per_s": row.tokens_per_s, "speedup": self.speedup(row),
                 "guard": self.guard(row), "baseline": row.key == self.baseline}
                for row in self.rows.values()],
            "markers": [asdict(mk) for mk in self.markers],
        }


class Telemetry:
    """What the sampler reported: GPU and host history, the NUMA view, the sampler's own cost."""

    HISTORY = 120   # polls kept for sparklines

    def __init__(self) -> None:
        from collections import deque

        self._deque = deque
        self.backend = ""            # "" until the backend is chosen
        self.devices: list[Any] = []  # GpuStatic
        self.reasons: list[str] = []  # why no GPU backend loaded
        self.topology: Any = None
        self.gpu: dict[int, Any] = {}
        self.host = deque(maxlen=self.HISTORY)
        self.ui_cpu_pct: float | None = None
        self.cost: Any = None
        self.numa: Any = None
        self.version = 0

    def add_tick(self, tick: Any, ui_cpu_pct: float | None, cost: Any = None) -> None:
        for s in tick.gpus:
            self.gpu.setdefault(s.index, self._deque(maxlen=self.HISTORY)).append(s)
        if tick.host is not None:
            self.host.append(tick.host)
        self.ui_cpu_pct = ui_cpu_pct
        self.cost = cost
        self.version += 1

    def gpu_busy_pct(self) -> float | None:
        """Mean utilization of the GPUs over the last few polls (the driver's own window)."""
        vals = [s.util_pct for hist in self.gpu.values() for s in list(hist)[-5:]
                if s.util_pct is not None]
        return sum(vals) / len(vals) if vals else None
