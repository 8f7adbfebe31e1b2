"""The DashboardModel without a terminal: the run loop, failed configurations, comparison
figures, bounded memory. A Port of lists stands in for the App."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llmtop.engine import catalogue
from llmtop.engine.protocol import (ConfigApplied, Configure, Error, Generate, RunDone, RunStarted,
                                    Status, Token)
from llmtop.tui import state
from llmtop.tui.model import DashboardModel, config_id
from llmtop.tui.requests import RunSettings

from . import fixed_session as fx


class ListPort:
    def __init__(self) -> None:
        self.sent: list = []
        self.notes: list[tuple[str, str]] = []
        self.topics: list[str] = []
        self.fresh = 0

    def send(self, command) -> bool:
        self.sent.append(command)
        return True

    def notify(self, text, severity="information", timeout=4) -> None:
        self.notes.append((severity, text))

    def changed(self, *topics) -> None:
        self.topics += topics

    def fresh_engine(self) -> None:
        self.fresh += 1

    def show_profile(self, profile, opts) -> None:
        pass


def make(**opts) -> tuple[DashboardModel, ListPort]:
    port = ListPort()
    settings = RunSettings.from_request(Generate(prompt="Hi", max_new_tokens=4), "x")
    model = DashboardModel(Configure("embedded", "cpu", "bf16", opts), settings, port)
    return model, port


def ready(model: DashboardModel) -> None:
    model.handle(Status("ready", ""))


def applied(model: DashboardModel, cfg: Configure) -> None:
    model.handle(ConfigApplied(cfg, "loaded", 0.1))


def configured() -> tuple[DashboardModel, Any]:
    """A model whose first configuration the engine applied, with the device's table."""
    model, port = make()
    ready(model)
    applied(model, port.sent[-1])
    ready(model)
    model.handle(fx.DEVICE)
    return model, port


def finish_run(model: DashboardModel, req: Generate, lats=(120.0, 40.0, 41.0)) -> None:
    t0 = 1_000_000_000 * req.run_id
    model.handle(RunStarted(req.run_id, [req.prompt or "x"], 3, req.batch, 4, t0))
    stamps, t = [], t0
    for i, lat in enumerate(lats):
        t += int(lat * 1e6)
        stamps.append(t)
        model.handle(Token(req.run_id, i, [i], [f" t{i}"], t))
    from llmtop.engine import metrics as m

    rm = m.run_metrics(t0, stamps, req.batch, 3)
    model.handle(RunDone(req.run_id, {"metrics": rm.to_dict(), "config": {}, "stopped": ""}))
    ready(model)


def test_loop_configures_then_runs():
    model, port = make()
    ready(model)                       # the engine is up, nothing applied: configure first
    assert isinstance(port.sent[-1], Configure) and port.sent[-1].opts == {**catalogue.DEFAULTS}
    applied(model, port.sent[-1])
    ready(model)                       # the guard passed: the configuration works
    assert isinstance(port.sent[-1], Generate) and model.working is not None
    finish_run(model, port.sent[-1])
    assert isinstance(port.sent[-1], Generate) and port.sent[-1].run_id == 2


def test_config_that_fails_at_apply_time_is_reported_once_and_never_retried():
    """Issue 14.1: the engine announces ConfigApplied, then its guard fails (an inductor error
    on the CPU): the failure is told once, the last working configuration comes back, and the
    loop generates with it instead of sending the failing one again."""
    model, port = make()
    ready(model)
    good = port.sent[-1]
    applied(model, good)
    ready(model)
    finish_run(model, port.sent[-1])
    model.handle(Status("ready", ""))
    model.handle(fx.DEVICE)
    assert model.select_option("compile", "full") and model.select_option("kv", "static")
    # the run in flight ends; then the new configuration goes out
    finish_run(model, port.sent[-1])
    bad = next(c for c in reversed(port.sent) if isinstance(c, Configure))
    assert bad.opts["compile"] == "full"
    applied(model, bad)                # announced before the guard ran
    model.handle(Error("config", "compile=full kv=static failed: CppCompileError"))
    model.handle(Status("ready", "SmolLM2"))
    again = port.sent[-1]
    assert isinstance(again, Configure) and again.opts == good.opts   # the working one, resent
    applied(model, again)
    ready(model)
    for _ in range(5):                 # the loop goes on generating, never sends `bad` again
        assert isinstance(port.sent[-1], Generate)
        finish_run(model, port.sent[-1])
    configs = [c for c in port.sent if isinstance(c, Configure)]
    assert sum(1 for c in configs if c.opts["compile"] == "full") == 1
    errors = [t for sev, t in port.notes if sev == "error"]
    assert len(errors) == 1 and "failed to apply" in errors[0] and "choose it again" in errors[0]
    assert model.desired.opts == good.opts and config_id(bad) in model.failed
    assert any(mk.kind == "failed" for mk in model.session.markers)
    # the user asks for it again: that is a retry; the option says why it failed until then
    model.select_option("compile", "full")
    assert model.would_fail("kv", "static") == "compile=full kv=static failed: CppCompileError"
    assert model.would_fail("kv", good.opts["kv"]) == ""
    model.select_option("kv", "static")
    assert config_id(bad) not in model.failed


def test_failure_at_start_up_falls_back_to_the_defaults():
    model, port = make(attention="flex", kv="static", compile="full")
    ready(model)
    first = port.sent[-1]
    assert first.opts["compile"] == "full"
    model.handle(Error("config", "flex failed"))
    model.handle(Status("error", "flex failed"))
    assert port.sent[-1].opts == {**catalogue.DEFAULTS}
    # and when the defaults fail too, the loop stops with the error on screen
    model.handle(Error("config", "no model"))
    model.handle(Status("error", "no model"))
    assert model.error.startswith("the engine cannot load this model")
    n = len(port.sent)
    ready(model)
    assert len(port.sent) == n


def test_restart_does_not_resurrect_a_failed_configuration():
    model, port = configured()
    model.select_option("attention", "flex")
    finish_run(model, port.sent[-1])
    model.handle(Error("config", "flex failed"))
    ready(model)
    model.engine_starting()            # ctrl+r
    ready(model)
    assert port.sent[-1].opts["attention"] == "sdpa"


def test_cancel_drops_the_pending_change():
    model, port = configured()
    model.select_option("kv", "static")   # a run is in flight: pending
    assert model.pending_changes() == ["kv=static"]
    assert model.cancel_change()
    assert model.pending_changes() == []
    finish_run(model, port.sent[-1])
    assert isinstance(port.sent[-1], Generate)


def test_one_token_runs_do_not_count_as_zero_tpot_and_speedup_is_like_with_like():
    """Issue 14.4: a 1-token run has no decode step; rows of another batch compare by tok/s."""
    s = state.Session()
    for ev in fx.engine_events()[:5]:
        if isinstance(ev, ConfigApplied):
            s.on_config(ev)

    def run(run_id, lats, batch=1):
        t0 = run_id * 10**10
        s.on_run_started(RunStarted(run_id, ["p"], 3, batch, 4, t0))
        stamps, t = [], t0
        for i, lat in enumerate(lats):
            t += int(lat * 1e6)
            stamps.append(t)
            s.on_token(Token(run_id, i, [i], ["x"], t))
        from llmtop.engine import metrics as m

        s.on_run_done(RunDone(run_id, {"metrics": m.run_metrics(t0, stamps, batch, 3).to_dict()}))

    run(1, [100, 80, 80, 80])
    run(2, [100])                      # EOS at once: one token
    row = next(iter(s.rows.values()))
    assert row.tpot_ms == pytest.approx(80.0, abs=0.01)
    run(3, [100, 120, 120], batch=4)
    rows = list(s.rows.values())
    ratio, basis = s.speedup(rows[1])
    assert basis == "tok/s" and ratio == pytest.approx((4000 / 120) / (1000 / 80), rel=1e-3)
    assert s.speedup(rows[0]) == (pytest.approx(1.0), "TPOT")


def test_memory_is_bounded():
    """Issue 14.10: runs, markers, per-row windows stay bounded; the means cover every run."""
    s = state.Session()
    for ev in fx.engine_events()[:5]:
        if isinstance(ev, ConfigApplied):
            s.on_config(ev)
    from llmtop.engine import metrics as m

    n = state.RUNS_KEPT * 3
    for run_id in range(1, n + 1):
        t0 = run_id * 10**10
        s.on_run_started(RunStarted(run_id, ["p"], 3, 1, 48, t0))
        stamps = [t0 + (k + 1) * 40_000_000 for k in range(48)]
        for i, t in enumerate(stamps):
            s.on_token(Token(run_id, i, [i], ["x"], t))
        s.on_engine_event(type("E", (), {"kind": "recompile", "detail": "", "t_ns": stamps[3]})())
        s.on_run_done(RunDone(run_id, {"metrics": m.run_metrics(t0, stamps, 1, 3).to_dict(),
                                       "tokens": [[{"index": i} for i in range(48)]]}))
    row = next(iter(s.rows.values()))
    assert len(s.runs) == state.RUNS_KEPT and len(s.markers) == state.MARKERS_KEPT
    assert len(row.runs) == state.ROW_RUNS_KEPT and len(row.itl) <= state.ITL_KEPT
    assert row.count == n and not math.isnan(row.tpot_ms)
    assert all("tokens" not in r.record for r in s.runs)   # the session file has them


def test_run_metrics_are_computed_once_per_stamp(monkeypatch):
    calls = []
    real = state.m.run_metrics
    monkeypatch.setattr(state.m, "run_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = state.Run(1, "p", 3, 1, 4, 0, {}, "k", stamps=[10**8, 2 * 10**8])
    for _ in range(3):
        run.metrics()
    assert len(calls) == 1
    run.stamps.append(3 * 10**8)
    run.metrics()
    assert len(calls) == 2


def test_an_option_chosen_before_the_engine_reports_is_kept_then_checked():
    """Before the engine's DeviceInfo (its first ~20 s) a choice is not refused as
    "waiting": the start-up configuration goes first, the choice is checked against the
    device's table when it arrives (in the engine's order: DeviceInfo, ConfigApplied, ready),
    and sent if it runs here, dropped with the reason if not."""
    model, port = make()
    assert model.select_option("attention", "eager")      # kept: nothing known yet
    assert model.select_option("gemm", "tunableop")       # unavailable on this CPU (fx.DEVICE)
    assert not any(sev == "warning" for sev, _ in port.notes)
    ready(model)
    first = port.sent[-1]
    assert isinstance(first, Configure) and first.opts == {**catalogue.DEFAULTS}
    model.handle(fx.DEVICE)
    applied(model, first)
    ready(model)
    second = port.sent[-1]
    assert isinstance(second, Configure)
    assert second.opts == {**catalogue.DEFAULTS, "attention": "eager"}
    assert any(sev == "warning" and "gemm=tunableop cannot run here: TunableOp" in text
               for sev, text in port.notes)
    assert model.select_option("gemm", "tunableop") is False   # known now: refused at once


def test_a_preset_chosen_before_the_engine_reports_is_kept_then_checked():
    model, port = make()
    assert model.apply_preset("max") == []
    ready(model)
    assert port.sent[-1].opts == {**catalogue.DEFAULTS}      # the start-up configuration first
    model.handle(fx.DEVICE)
    applied(model, port.sent[-1])
    ready(model)
    runnable = {a: v for a, v in catalogue.PRESETS["max"].items() if fx.CPU_OPTIONS[a][v][0]}
    assert port.sent[-1].opts == {**catalogue.DEFAULTS, **runnable}
    for axis, name in catalogue.PRESETS["max"].items():
        if axis not in runnable:
            assert any(f"{axis}={name} cannot run here" in text for _, text in port.notes)
