"""Pilot tests (App.run_test) against a real engine on the embedded model, on the CPU."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from llmtop.engine.protocol import Configure, Generate
from llmtop.tui.analysis import num
from llmtop.tui.app import LlmtopApp
from textual.widgets import OptionList

from .helpers import run_async, screen_text, wait_for

pytestmark = pytest.mark.timeout(700)

SIZE = (160, 50)
TOKENS = 5
RUN_TIMEOUT = 150   # a loaded 2-core CI box can take ~1 s a token


def make_app(client=None, **kw) -> LlmtopApp:
    return LlmtopApp(Configure(model="embedded", device="cpu"),
                     Generate(prompt="The largest continent is", max_new_tokens=TOKENS),
                     client=client, telemetry=kw.pop("telemetry", False), **kw)


def done_runs(app):
    return [r for r in app.session.runs if r.record is not None]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_tokens_appear_and_metrics_update(engine_client):
    async def body():
        app = make_app(engine_client, telemetry=True)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: any(r.stamps for r in app.session.runs), RUN_TIMEOUT,
                           "the first token")
            await wait_for(pilot, lambda: len(done_runs(app)) >= 1, RUN_TIMEOUT, "a finished run")
            app.redraw_all()
            await pilot.pause(0.2)
            run = done_runs(app)[0]
            generated = "".join(run.texts).strip()
            assert generated, "the run produced no text"
            text = screen_text(app)
            assert "The largest continent is" in text
            assert generated.split()[0] in text, f"generated text {generated!r} not on screen"
            tpot = run.record["metrics"]["tpot_ms"]
            assert f"{num(tpot, 2)} ms" in text, "the metrics panel does not show the run's TPOT"
            assert "TTFT" in text and "bottleneck:" in text
            # the comparison gets the configuration's row, with the run's TPOT
            assert len(app.session.rows) == 1
            assert num(tpot, 2) in text
            # the loop goes on: a second run starts without any key pressed
            await wait_for(pilot, lambda: len(app.session.runs) >= 2, RUN_TIMEOUT, "a second run")
            # telemetry reached the host panel (the real psutil sampler)
            await pilot.press("h")
            await wait_for(pilot, lambda: "engine pid" in screen_text(app), 20, "the host panel")

    run_async(body())


def _choose(app, axis: str, name: str) -> OptionList:
    ol = app.query_one(f"#opt-{axis}", OptionList)
    ol.focus()
    ol.highlighted = ol.get_option_index(f"{axis}={name}")
    return ol


def test_toggle_reconfigures_and_adds_comparison_rows(engine_client):
    async def body():
        app = make_app(engine_client)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: len(done_runs(app)) >= 1, RUN_TIMEOUT, "a first run")
            await wait_for(pilot, lambda: app.session.device is not None, 30, "DeviceInfo")
            assert app.session.config.opts["attention"] == "sdpa"
            _choose(app, "attention", "eager")
            await pilot.press("enter")
            assert app.desired.opts["attention"] == "eager"
            await wait_for(pilot, lambda: app.session.config.opts["attention"] == "eager",
                           RUN_TIMEOUT, "the engine to switch to eager attention")
            await wait_for(pilot, lambda: len(app.session.rows) >= 2, RUN_TIMEOUT,
                           "a comparison row for attention=eager")
            assert any(m.kind == "config" and "attention=eager" in m.label for m in app.session.markers)
            _choose(app, "kv", "static")
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(app.session.rows) >= 3, RUN_TIMEOUT,
                           "a comparison row for kv=static")
            app.redraw_all()
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "attention=eager" in text and "kv=static" in text
            labels = [row.label for row in app.session.rows.values()]
            assert labels[:3] == ["defaults", "attention=eager", "attention=eager kv=static"]
            # the first configuration is the baseline; the others get a measured speedup
            rows = list(app.session.rows.values())
            assert app.session.baseline == rows[0].key
            assert all(app.session.speedup(r)[0] > 0 for r in rows)

    run_async(body())


def test_unavailable_option_cannot_be_turned_on(engine_client):
    async def body():
        app = make_app(engine_client)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session.device is not None, RUN_TIMEOUT, "DeviceInfo")
            app.redraw_all()
            await pilot.pause(0.1)
            ol = app.query_one("#opt-attention", OptionList)
            assert ol.get_option("attention=cudnn").disabled
            before = dict(app.desired.opts)
            ol.focus()
            ol.highlighted = ol.get_option_index("attention=cudnn")   # skipped: it is disabled
            await pilot.press("enter")
            assert app.desired.opts == before
            # the reason is on screen next to the option
            reason = app.session.device.options["attention"]["cudnn"]["reason"]
            assert reason and "GPU" in reason
            text = screen_text(app)
            assert "cudnn" in text and reason[:30] in text.replace("\n", " ") or reason[:20] in text
            # the command palette's path is refused too, and says why
            assert app.select_option("attention", "cudnn") is False
            assert app.desired.opts == before
            await pilot.pause(0.1)
            assert any("cudnn" in n.message and "GPU" in n.message for n in app._notifications)

    run_async(body())


def test_profile_key_shows_top_ops_and_busy_split(engine_client):
    async def body():
        app = make_app(engine_client)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session.config is not None, RUN_TIMEOUT, "a configuration")
            await pilot.press("f")
            assert app.model.profile_pending > 0
            await wait_for(pilot, lambda: app.model.profiles, RUN_TIMEOUT * 2, "a step profile")
            await pilot.pause(0.3)
            p = app.model.profiles[-1]
            assert p.device == "cpu" and p.step_ms > 0 and 0 <= p.busy_ms <= p.step_ms * 1.05
            assert p.top_kernels
            text = screen_text(app)
            assert "step profile" in text and p.top_kernels[0]["name"][:20] in text
            assert any(m.kind == "profile" for m in app.session.markers)
            await pilot.press("escape")
            assert "step profile" not in screen_text(app)

    run_async(body())


def test_config_failing_at_apply_time_is_reported_once_and_the_loop_goes_on(engine_client):
    """14.1 with the real engine: attention=mem_efficient (then cudnn) raises when the engine
    applies it on a CPU (no such SDPA kernel). At start-up the defaults take over and generate; later, the
    failing configuration is reported once, the working one keeps generating, and it is never
    sent again on its own (the old loop re-sent it forever, or stopped with an error bar)."""
    async def body():
        app = LlmtopApp(Configure(model="embedded", device="cpu", opts={"attention": "mem_efficient"}),
                        Generate(prompt="The largest continent is", max_new_tokens=3),
                        client=engine_client, telemetry=False)
        notified: list[str] = []
        notify = app.notify
        app.notify = lambda message, *a, **kw: (notified.append(str(message)), notify(message, *a, **kw))[1]
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: len(done_runs(app)) >= 1, RUN_TIMEOUT * 2,
                           "a run with the defaults after the failed start-up configuration")
            assert app.session.config.opts["attention"] == "sdpa" and not app.model.error
            model = app.model
            # the engine's table says it cannot run; force it as if the table were wrong
            model.desired.opts["attention"] = "cudnn"
            await wait_for(pilot, lambda: len(model.failed) >= 2, RUN_TIMEOUT * 2,
                           "the second failure")
            runs = len(done_runs(app))
            await wait_for(pilot, lambda: len(done_runs(app)) >= runs + 2, RUN_TIMEOUT * 2,
                           "two more runs with the working configuration")
            # one at start-up, one later: each reported once (counted as sent: a toast expires
            # before a loaded machine gets here)
            assert sum("failed to apply" in message for message in notified) == 2
            assert model.desired.opts["attention"] == "sdpa"
            assert all(r.opts["attention"] == "sdpa" for r in done_runs(app))
            await pilot.pause(0.2)
            assert "failed here: " in screen_text(app)   # marked in the optimize tab, with why

    run_async(body())


@pytest.mark.slow
def test_a_plain_question_gets_an_answer(engine_client):
    """14.3: the embedded instruct model answers through its chat template by default."""
    async def body():
        app = LlmtopApp(Configure(model="embedded", device="cpu"),
                        Generate(prompt="What is the capital of France?", max_new_tokens=8),
                        client=engine_client, telemetry=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: len(done_runs(app)) >= 1, RUN_TIMEOUT * 2, "an answer")
            run = done_runs(app)[0]
            answer = "".join(run.texts).strip()
            assert app.model.settings.chat and len(run.texts) > 1 and answer, run.texts
            assert "Paris" in answer or len(answer.split()) >= 2, answer

    run_async(body())


def test_killed_engine_shows_error_and_restarts(engine_client):
    """Runs last of the shared-engine tests: it kills that engine."""
    async def body():
        app = make_app(engine_client)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: any(r.stamps for r in app.session.runs), RUN_TIMEOUT,
                           "a first token")
            old_pid = engine_client.pid
            os.kill(old_pid, signal.SIGKILL)
            await wait_for(pilot, lambda: app.model.error, 10, "the dead engine to be reported")
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "died" in text and "ctrl+r" in text
            assert "error" in text
            measured = len(app.session.runs)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.engine_pid and app.engine_pid != old_pid, 30,
                           "a new engine process")
            new_pid = app.engine_pid
            await wait_for(pilot, lambda: not app.model.error and any(
                r.stamps for r in list(app.session.runs)[measured:]), RUN_TIMEOUT * 2,
                "tokens from the restarted engine")
            assert not app.query_one("#error-bar").has_class("visible")
            assert "Press ctrl+r" not in screen_text(app)
            assert len(app.session.runs) > measured   # the earlier runs are kept
        assert gone(old_pid) and gone(new_pid), "an engine process outlived the app"

    run_async(body())


def test_quit_key_leaves_no_engine_process():
    async def body():
        app = make_app(None)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.engine_pid, 30, "the engine process")
            pid = app.engine_pid
            children = psutil.Process(pid).children(recursive=True)
            await wait_for(pilot, lambda: app.session.status.phase in ("ready", "loading", "warming",
                                                                       "generating"),
                           RUN_TIMEOUT, "the engine to start")
            await pilot.press("q")
        assert gone(pid), "the engine survived quitting"
        assert all(gone(c.pid) for c in children)

    run_async(body())
