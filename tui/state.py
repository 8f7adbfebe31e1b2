"""What the dashboard knows, as plain Python: runs, live metrics, the comparison, markers.

No Textual here, so the bookkeeping (live TTFT/TPOT, the per-configuration comparison, the
correctness guard, the plot's series) is tested without a terminal. The app feeds engine
events in; widgets read from it when they redraw.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop.engine import catalogue
from llmtop.engine import metrics as m
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, ModelInfo,
                                    RunDone, RunStarted, Status, Token)

# axis order of the badges and the configuration labels
AXIS_ORDER = tuple(catalogue.AXES)

# a token slower than this many times the run's median step stands out
SLOW_RATIO = 1.3
SPIKE_RATIO = 2.0

PLOT_WINDOW = 400        # steps the latency plot shows
# What stays in memory (issue 14.10: the screen's needs, bounded; the session file has all):
RUNS_KEPT = 48           # latest runs: the token stream shows 12, the plot 400 steps
ROW_RUNS_KEPT = 8        # latest runs per comparison row (the guard compares their ids)
ITL_KEPT = 2048          # latest gaps per row for its percentiles
MARKERS_KEPT = 64        # plot markers
GUARD_STATES = ("identical", "equivalent", "diverged")
SERVER_READINGS_KEPT = 120   # an attached server's /metrics readings (a minute at 0.5 s)


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
    chat: bool = False               # prompt is the user's question (a chat template around it)
    first_step: int = 0              # global step number of this run's first token (plot x)
    stamps: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)      # request 0
    texts: list[str] = field(default_factory=list)    # request 0
    record: dict[str, Any] | None = None
    error: str = ""
    # the live metrics, computed once per new stamp (widgets ask several times a frame)
    _cache: tuple[int, Any] | None = field(default=None, repr=False, compare=False)

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

    def run_metrics(self) -> m.RunMetrics | None:
        """The stamps' metrics (the engine's formulas), cached until the next stamp."""
        if not self.stamps:
            return None
        if self._cache is None or self._cache[0] != len(self.stamps):
            self._cache = (len(self.stamps), m.run_metrics(self.t_start_ns, self.stamps, self.batch,
                                                           self.prompt_tokens))
        return self._cache[1]

    def metrics(self) -> dict[str, Any] | None:
        """The engine's metrics once done; meanwhile the same formulas over the stamps so far."""
        if self.record is not None:
            return self.record.get("metrics")
        rm = self.run_metrics()
        return rm.to_dict() if rm is not None else None


@dataclass
class Marker:
    step: int      # global step the marker sits before
    kind: str      # config | failed | recompile | capture | tuning | profile ...
    label: str


# figures a comparison row averages over all its runs (not only the runs kept in memory);
# TPOT and decode tok/s need two tokens: a 1-token run has no decode step, not a 0 ms one
ROW_MEANS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "decode_tokens_per_s",
             "prefill_tokens_per_s", "tpot_steady_ms", "stalls")
ROOF_MEANS = ("decode_pct", "prefill_pct", "achieved_gb_s", "decode_floor_ms", "prefill_floor_ms")
DECODE_ONLY = ("tpot_ms", "decode_tokens_per_s", "tpot_steady_ms")


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


@dataclass
class Row:
    """One configuration in the comparison table: running means over every run it had, and
    a bounded window of its latest runs (the guard compares their ids)."""

    key: str
    label: str
    opts: dict[str, str]
    batch: int
    runs: deque = field(default_factory=lambda: deque(maxlen=ROW_RUNS_KEPT))
    count: int = 0
    n_tokens: int = 0
    sums: dict[str, list[float]] = field(default_factory=dict)   # name -> [sum, count]
    itl: deque = field(default_factory=lambda: deque(maxlen=ITL_KEPT))
    guards: dict[str, int] = field(default_factory=dict)         # engine guard status -> runs
    diverged_at: int | None = None

    def add(self, run: Run) -> None:
        rec = run.record or {}
        mt = rec.get("metrics") or {}
        self.runs.append(run)
        self.count += 1
        self.n_tokens += int(mt.get("n_tokens") or 0)
        self.itl.extend(mt.get("itl_ms") or [])
        decode = (mt.get("n_tokens") or 0) > 1
        for where, names in (("metrics", ROW_MEANS), ("roofline", ROOF_MEANS)):
            for name in names:
                value = (rec.get(where) or {}).get(name)
                if _real(value) and (decode or name not in DECODE_ONLY):
                    acc = self.sums.setdefault(f"{where}.{name}", [0.0, 0])
                    acc[0] += value
                    acc[1] += 1
        g = rec.get("guard") or {}
        if g.get("status") in GUARD_STATES:
            self.guards[g["status"]] = self.guards.get(g["status"], 0) + 1
            if g["status"] != "identical" and g.get("diverged_at") is not None:
                at = int(g["diverged_at"])
                self.diverged_at = at if self.diverged_at is None else min(self.diverged_at, at)

    def mean(self, name: str, where: str = "metrics") -> float:
        acc = self.sums.get(f"{where}.{name}")
        return acc[0] / acc[1] if acc and acc[1] else math.nan

    @property
    def ttft_ms(self) -> float:
        return self.mean("ttft_ms")

    @property
    def tpot_ms(self) -> float:
        return self.mean("tpot_ms")

    @property
    def tokens_per_s(self) -> float:
        return self.mean("decode_tokens_per_s")


class Session:
    """Everything measured since the dashboard started (or the history was cleared), within
    bounds: the latest runs and markers are kept for the screen, every comparison row keeps
    running means; every record is in the session file (--record) as it arrives."""

    def __init__(self) -> None:
        self.model: ModelInfo | None = None
        self.device: DeviceInfo | None = None
        self.config: Configure | None = None      # what the engine runs now (ConfigApplied)
        self.status = Status("starting", "starting the engine")
        self.guard_result: Any = None   # the engine's latest GuardResult (check prompt vs baseline)
        # an attached server's /metrics readings (ServerMetrics), the latest last
        self.server_metrics: deque = deque(maxlen=SERVER_READINGS_KEPT)
        self.current: Run | None = None
        self.clear()

    def clear(self) -> None:
        keep = self.current
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self.rows: dict[str, Row] = {}
        self.baseline: str | None = None
        self.markers: deque[Marker] = deque(maxlen=MARKERS_KEPT)
        self.steps = 0
        self.current = keep if keep is not None and not keep.done else None
        if self.current is not None:
            self.runs.append(self.current)
            self.current.first_step = 0
            self.steps = len(self.current.stamps)

    # ---- events ---------------------------------------------------------------------------

    def on_status(self, ev: Status) -> None:
        self.status = ev

    def on_guard(self, ev: Any) -> None:
        self.guard_result = ev

    def on_server_metrics(self, ev: Any) -> None:
        self.server_metrics.append(ev)

    def on_model(self, ev: ModelInfo) -> None:
        self.model = ev

    def on_device(self, ev: DeviceInfo) -> None:
        self.device = ev

    def on_config(self, ev: ConfigApplied) -> Configure:
        old, new = self.config, ev.config
        self.config = new
        if old is not None and (old.opts, old.tp) != (new.opts, new.tp):
            changed = [f"{a}={v}" for a, v in new.opts.items() if old.opts.get(a) != v]
            if old.tp != new.tp:
                changed.append(f"tp={new.tp}")
            self.markers.append(Marker(self.steps, "config", " ".join(changed) or ev.how))
        elif old is not None and ev.how == "loaded" and old != new:
            self.markers.append(Marker(self.steps, "config", "reloaded"))
        return new

    def on_engine_event(self, ev: EngineEvent) -> None:
        """Recompiles, graph captures, tuning: placed at the step that was running then."""
        step = self.steps
        run = self.current
        if run is not None and run.stamps:
            before = sum(1 for t in run.stamps if t <= ev.t_ns)
            step = run.first_step + before
        self.markers.append(Marker(step, ev.kind, ev.detail or ev.kind))

    def on_run_started(self, ev: RunStarted, sample: bool = False, prompt_len: int | None = None,
                       asked: str | None = None) -> Run:
        """`asked`: the user's words when the engine's prompt is the chat template around them."""
        cfg = self.config or Configure()
        opts = dict(cfg.opts)
        run = Run(ev.run_id, asked or (ev.prompts[0] if ev.prompts else ""), ev.prompt_tokens, ev.batch,
                  ev.max_new_tokens, ev.t_start_ns, opts, config_key(opts, ev.batch, prompt_len, cfg.tp),
                  sample=sample, tp=cfg.tp, chat=asked is not None, first_step=self.steps)
        self.current = run
        self.runs.append(run)
        return run

    def on_token(self, ev: Token) -> bool:
        run = self.current
        if run is None or run.run_id != ev.run_id:
            return False
        run.stamps.append(ev.t_ns)
        if ev.ids:
            run.ids.append(ev.ids[0])
        if ev.ids or ev.texts:   # a server may stream text without token ids
            run.texts.append(ev.texts[0] if ev.texts else "")
        self.steps += 1
        return True

    def on_run_done(self, ev: RunDone) -> Run | None:
        run = self.current if self.current and self.current.run_id == ev.run_id else None
        if run is None:
            return None
        # the tokens are in the run (ids, texts, stamps) and in the session file: not twice here
        run.record = {k: v for k, v in ev.record.items() if k != "tokens"}
        self.current = None
        if not ev.record.get("stopped") or ev.record.get("stopped") == "stop":
            self._add_to_row(run)
        return run

    def on_run_error(self, message: str) -> None:
        if self.current is not None:
            self.current.error = message
            self.current = None

    # ---- comparison -------------------------------------------------------------------------

    def _add_to_row(self, run: Run) -> None:
        row = self.rows.get(run.key)
        if row is None:
            row = self.rows[run.key] = Row(run.key, config_label(run.opts, run.batch, tp=run.tp),
                                           run.opts, run.batch)
        row.add(run)
        if self.baseline is None:
            self.baseline = run.key

    def set_baseline(self, key: str) -> bool:
        if key in self.rows:
            self.baseline = key
            return True
        return False

    def speedup(self, row: Row) -> tuple[float, str]:
        """(ratio, what it compares) against the ★ baseline: like with like. Same batch: baseline
        TPOT over this row's ("TPOT"); another batch size: this row's decode tok/s over the
        baseline's ("tok/s"), since per-step latency of different batches is no speed-up."""
        base = self.rows.get(self.baseline or "")
        if base is None:
            return math.nan, ""
        if base.batch == row.batch:
            if not _real(row.tpot_ms) or not row.tpot_ms or not _real(base.tpot_ms):
                return math.nan, "TPOT"
            return base.tpot_ms / row.tpot_ms, "TPOT"
        if not _real(row.tokens_per_s) or not _real(base.tokens_per_s) or not base.tokens_per_s:
            return math.nan, "tok/s"
        return row.tokens_per_s / base.tokens_per_s, "tok/s"

    def guard(self, row: Row) -> tuple[str, str]:
        """(state, text): the engine's correctness guard when the records carry one
        (identical / equivalent within the dtype's tolerance / diverged), else our comparison of
        greedy ids against the ★ baseline's for the same prompt. Only "diverged" is an alarm."""
        if row.guards:
            if row.guards.get("diverged"):
                return "diverged", f"diverged @{row.diverged_at}"
            if row.guards.get("equivalent"):   # differs only where the dtype's rounding can flip
                return "equivalent", f"≈ equivalent @{row.diverged_at}"
            return "identical", "identical"
        if row.key == self.baseline:
            return "baseline", "baseline"
        base = self.rows.get(self.baseline or "")
        if base is None:
            return "", "—"
        if all(r.sample for r in row.runs):
            return "", "sampled: n/a"
        if not any(r.ids for r in row.runs):
            return "", "no token ids"   # a server that streams text only
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
            return "", "no common prompt yet"
        if first_bad is not None:
            return "diverged", f"diverged @{first_bad}"
        return "identical", f"identical ({compared})"

    # ---- what widgets show ------------------------------------------------------------------

    def current_or_last(self) -> Run | None:
        if self.current is not None and self.current.stamps:
            return self.current
        for run in reversed(self.runs):
            if run.stamps:
                return run
        return None

    def session_metrics(self, key: str | None) -> dict[str, Any] | None:
        """Over every finished run of one configuration: means, and percentiles of its latest
        gaps (ITL_KEPT of them)."""
        row = self.rows.get(key or "")
        if row is None or not row.count:
            return None
        out: dict[str, Any] = {k: row.mean(k) for k in ROW_MEANS}
        out["itl"] = asdict(m.Summary.of(list(row.itl)))
        out["n_tokens"] = row.n_tokens
        out["runs"] = row.count
        out["roofline"] = {k: row.mean(k, "roofline") for k in ROOF_MEANS}
        return out

    def live_roofline(self, run: Run) -> dict[str, Any] | None:
        """The record's roofline once done; meanwhile the same formula over the live stamps."""
        if run.record is not None:
            return run.record.get("roofline")
        if (self.model is None or self.device is None or len(run.stamps) < 2
                or not self.device.mem_bw_gb_s):   # no ceilings (an attached server)
            return None
        rm = run.run_metrics()
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
        """The session as JSON: the records kept in memory, the whole comparison, the markers."""
        rows = []
        for row in self.rows.values():
            ratio, basis = self.speedup(row)
            rows.append({"configuration": row.label, "opts": row.opts, "batch": row.batch,
                         "runs": row.count, "ttft_ms": row.ttft_ms, "tpot_ms": row.tpot_ms,
                         "tokens_per_s": row.tokens_per_s, "speedup": ratio, "speedup_by": basis,
                         "guard": self.guard(row)[1], "baseline": row.key == self.baseline})
        return {
            "schema": "llmtop.session/1",
            "model": asdict(self.model) if self.model else None,
            "device": asdict(self.device) if self.device else None,
            "config": asdict(self.config) if self.config else None,
            "runs": [r.record for r in self.runs if r.record is not None],
            "comparison": rows,
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

    def add_tick(self, tick: Any, ui_cpu_pct: float | None, cost: Any = None) -> None:
        for s in tick.gpus:
            self.gpu.setdefault(s.index, self._deque(maxlen=self.HISTORY)).append(s)
        if tick.host is not None:
            self.host.append(tick.host)
        self.ui_cpu_pct = ui_cpu_pct
        self.cost = cost

    def gpu_busy_pct(self) -> float | None:
        """Mean utilization of the GPUs over the last few polls (the driver's own window)."""
        vals = [s.util_pct for hist in self.gpu.values() for s in list(hist)[-5:]
                if s.util_pct is not None]
        return sum(vals) / len(vals) if vals else None
