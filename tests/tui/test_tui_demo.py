"""Issue 14 (the live demo), the points that need no engine: pilots on a fixed session."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Input

from llmtop.engine.protocol import Configure, Generate, Status, Stop
from llmtop.tui.app import LlmtopApp
from llmtop.tui.widgets import latency_plot as lp
from llmtop.tui.widgets.metrics import LABELS, MetricsPanel, metric_rows

from . import fixed_session as fx
from .helpers import Sent, screen_text


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def run_app(body, size=(160, 48), **kw):
    async def main():
        app = LlmtopApp(start_engine=False, telemetry=False, **kw)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
    asyncio.run(main())


async def fed(app, pilot, client: Sent | None = None):
    fx.feed(app)
    if client is not None:
        app.client = client
        app.model.engine_up, app.model.busy = True, False
    await pilot.pause()
    app.redraw_all()
    await pilot.pause()


def test_typing_a_prompt_changes_nothing_else_and_enter_starts_one_run():
    """14.2: / puts the cursor in the prompt; letters typed there are the field's (no tab, no
    theme, no pause, no clear); nothing is sent per keystroke; Enter submits; Esc leaves."""
    async def body(app, pilot):
        client = Sent()
        await fed(app, pilot, client)
        await pilot.pause()
        client.sent.clear()                            # the loop's run in flight goes on
        assert app.model.busy
        theme, rows = app.theme, dict(app.session.rows)
        await pilot.press("slash")
        await pilot.pause()
        assert isinstance(app.focused, Input) and app.focused.id == "set-prompt"
        await pilot.press(*"What is the capital of France? ctbfs")
        await pilot.pause()
        assert app.theme == theme and not app.model.paused and app.session.rows == rows
        assert app.query_one("#tabs").active == "run"
        assert not isinstance(app.screen, type(None)) and app.model.settings.prompt is None
        assert client.sent == []                       # no run per keystroke
        await pilot.press("enter")
        await pilot.pause()
        assert app.model.settings.prompt == "What is the capital of France? ctbfs"
        assert not isinstance(app.focused, Input)      # Enter submits and leaves the field
        assert client.sent == []                       # the run in flight ends first
        app.model.busy, app.model.inflight = False, None
        app.model.step()
        runs = [c for c in client.sent if isinstance(c, Generate)]
        assert len(runs) == 1
        req = runs[0]
        asked = req.messages[-1]["content"] if req.messages else req.prompt
        assert asked == "What is the capital of France? ctbfs"
        await pilot.press("slash")
        await pilot.press("x", "escape")
        await pilot.pause()
        assert not isinstance(app.focused, Input)
        await pilot.press("t")                         # keys act again once out of the field
        assert app.theme != theme

    run_app(body)


def test_a_double_enter_in_the_palette_runs_its_command_once():
    """Two Enters reaching the palette before the first one's selection lands (as a terminal
    delivers a burst) closed it twice in Textual 8.2.8: the second pop took the dashboard's own
    screen and the app died (ScreenStackError). The command runs once: Pause, not pause and
    resume."""
    from textual.command import CommandInput

    async def body(app, pilot):
        await fed(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Pause")
        await pilot.pause(0.5)
        field = app.screen.query_one(CommandInput)
        field.post_message(Input.Submitted(field, field.value))
        field.post_message(Input.Submitted(field, field.value))
        await pilot.pause(0.5)
        assert len(app.screen_stack) == 1 and app.is_running
        assert app.model.paused

    run_app(body)


def test_ctrl_p_right_after_the_palette_closed_opens_it_again():
    """A closed palette stays among the app's children until its removal: a ctrl+p before
    that (a slow loop, a quick person) pushed a second one with Textual's fixed id, and the
    app died with DuplicateIds (seen in the traced soak)."""
    from textual.command import CommandPalette

    async def body(app, pilot):
        await fed(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        first = app.screen
        app.pop_screen()
        assert first in app._nodes          # not removed yet
        app.action_command_palette()
        assert isinstance(app.screen, CommandPalette) and app.screen is not first
        await asyncio.sleep(0.5)
        assert app.is_running and first not in app._nodes
        app.exit()

    run_app(body)


def test_tab_moves_from_the_prompt_to_the_batch_field():
    """Tab and shift+Tab move between the run settings' fields (the typing guard held them
    back, so a soak's Tab then "2" made "2" the prompt)."""
    async def body(app, pilot):
        await fed(app, pilot)
        await pilot.press("slash")
        await pilot.pause()
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is not None and app.focused.id == "set-batch"
        await pilot.press("shift+tab")
        await pilot.pause()
        assert app.focused.id == "set-prompt"
        await pilot.press("tab", "ctrl+u", "2", "enter")
        await pilot.pause()
        assert app.model.settings.batch == 2 and app.model.settings.prompt is None

    run_app(body)


def test_chat_template_is_the_default_for_a_model_that_has_one():
    """14.3: the embedded (instruct) model gets its prompts through the chat template, with a
    raw-text switch in the run settings; synthetic models send text as it is."""
    from llmtop.tui.requests import has_chat_template, wants_chat

    assert has_chat_template("embedded") and not has_chat_template("synthetic:tiny")
    assert wants_chat("embedded") and not wants_chat("embedded", raw=True)

    async def body(app, pilot):
        await fed(app, pilot)
        assert app.model.settings.chat
        req = app.model.settings.request(1, 0)
        assert req.messages == [{"role": "user", "content": "Hi"}] and req.prompt is None
        await pilot.press("r")
        await pilot.pause()
        switch = app.query_one("#set-chat")
        assert switch.value is True
        switch.value = False
        await pilot.pause()
        assert app.model.settings.request(2, 0).prompt == "Hi"

    run_app(body, configure=Configure(model="embedded"), request=Generate(prompt="Hi"))


def test_b_moves_the_star_and_speedup_says_what_it_compares():
    """14.4: ★ is the speedup baseline and b moves it to the current configuration's row."""
    async def body(app, pilot):
        await fed(app, pilot)
        rows = list(app.session.rows.values())
        assert app.session.baseline == rows[0].key
        await pilot.press("b")            # the current run is attention=eager's
        await pilot.pause(0.3)
        assert app.session.baseline == rows[1].key
        line = next(ln for ln in screen_text(app).splitlines() if "attention=eager" in ln and "★" in ln)
        assert "1.00× ★" in line
        other = next(ln for ln in screen_text(app).splitlines() if " defaults " in ln)
        assert "★" not in other.split("defaults")[0]

    run_app(body)


def test_long_wait_says_what_runs_and_how_long_it_took_last_time(tmp_path):
    """14.5: a Configure in flight is named with its elapsed time and the last time it took on
    this machine; the old figures are marked as the previous configuration's; x cancels."""
    from llmtop.tui.step_times import StepTimes

    times = tmp_path / "times.json"
    want = Configure("embedded", "cpu", "bf16", {**fx.opts(attention="eager"), "kv": "static"})
    StepTimes(times).note(want, 33.0)

    async def body(app, pilot):
        client = Sent()
        await fed(app, pilot, client)
        app.model.inflight = None
        app.model.busy = False
        assert app.select_option("kv", "static")
        cfg = client.sent[-1]
        assert isinstance(cfg, Configure) and cfg.opts["kv"] == "static"
        app.handle_event(Status("compiling", "correctness guard on the check prompt"))
        app.redraw_all()
        await pilot.pause()
        text = screen_text(app)
        assert "applying kv=static" in text.replace("attention=eager ", "") and "last time 33 s" in text
        assert "prev. config #3" in text
        assert app.model.cancel_change()
        assert app.model.desired.opts["kv"] == "dynamic"

    run_app(body, times_path=times)


def test_decode_scale_ignores_a_100x_ttft_outlier_and_ticks_are_integers():
    """14.6: decode steps and TTFT have their own scales; labels never overlap."""
    ys = [80.0] * 400
    ty = [8000.0, 120.0]
    sc = lp.scales(ys, ty)
    assert sc.decode_top < 200 and sc.ttft_top >= 8000
    # a recompile mid run: clipped, counted
    sc = lp.scales(ys + [30_000.0], ty)
    assert sc.decode_top < 200 and sc.clipped == 1
    assert all(isinstance(t, int) for t in lp.int_ticks(3, 47, 6)) and len(lp.int_ticks(0, 1000, 6)) <= 6
    labels = lp.place_labels([(10, "attention=eager"), (12, "recompile"), (60, "flex")], 0, 100, 60)
    spans = sorted((x / 100 * 60, x / 100 * 60 + len(t) + 1) for x, t in labels)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and len(labels) == 2
    # none over the legend, top left ("eilingTTFT" was a label drawn across it)
    assert not lp.place_labels([(2, "compile")], 0, 100, 60, clear=lp.LEGEND_COLS)

    async def body(app, pilot):
        await fed(app, pilot)
        first = fx.run_events(9, "p", fx.TEXT_1, [100 * fx.LAT_1[0]] + fx.LAT_1[1:], 30_000_000_000, fx.opts())
        for ev in first:
            app.handle_event(ev)
        plot = app.query_one(lp.LatencyPlot)
        plot.redraw_now()
        await pilot.pause()
        _, ys, _, ty = app.session.plot_series()
        assert max(ty) > 100 * max(ys) / 2
        assert lp.scales(ys, ty).decode_top < 3 * max(ys)

    run_app(body)


@pytest.mark.parametrize("size", [(160, 48), (100, 30), (80, 24)])
def test_no_figure_is_cut_and_help_is_reachable(size):
    """14.7: every figure the metrics panel shows appears whole; the footer keeps ? Help."""
    async def body(app, pilot):
        await fed(app, pilot)
        text = screen_text(app)
        s = app.session
        run = s.current_or_last()
        live = metric_rows(run.metrics(), s.live_roofline(run), s.device.mem_bw_gb_s)
        sess = s.session_metrics(run.key)
        config = metric_rows(sess, sess.get("roofline"), s.device.mem_bw_gb_s)
        panel = next(p for p in app.query(MetricsPanel) if p.display)
        shown = [label for label in LABELS
                 if not panel.compact or label in __import__("llmtop.tui.widgets.metrics",
                                                             fromlist=["x"]).COMPACT_LABELS]
        for label, a, b in zip(LABELS, live, config):
            if label in shown:
                assert a in text and b in text, f"{label}: {a!r} or {b!r} cut"
        if not app.screen.has_class("-stacked"):   # stacked, the comparison is below the fold
            for row in s.rows.values():
                assert row.label in text
        assert "…" not in "".join(ln for ln in text.splitlines() if "ms" in ln)
        footer = text.splitlines()[-1]
        assert "Help" in footer, footer

    run_app(body, size=size)


def test_keyboard_moves_between_tabs_and_options():
    """14.8: Left/Right change tabs; arrows move the highlight; a list left shows no stale one;
    Enter picks the highlighted option."""
    async def body(app, pilot):
        await fed(app, pilot)
        tabs = app.query_one("#tabs")
        await pilot.press("right")
        assert tabs.active == "run"
        await pilot.press("left")
        assert tabs.active == "optimize"
        ol = app.query_one("#opt-attention")
        ol.focus()
        await pilot.pause()
        assert ol.highlighted is not None
        start = ol.highlighted
        await pilot.press("down")
        assert ol.highlighted != start
        await pilot.press("tab")
        await pilot.pause()
        assert ol.highlighted is None and app.focused is not ol
        assert app.focused.has_pseudo_class("focus")
        kv = app.query_one("#opt-kv")
        kv.focus()
        kv.highlighted = kv.get_option_index("kv=static")
        await pilot.press("enter")
        assert app.model.desired.opts["kv"] == "static"

    run_app(body)


def test_light_theme_after_t_uses_the_light_palette():
    """14.9: the token colours after switching to the light theme equal those at start-up with
    --theme light (the palette cache kept the dark ones)."""
    colours = {}

    async def start_light(app, pilot):
        await fed(app, pilot)
        colours["start"] = app.query_one("#tokens").colours()

    async def switch(app, pilot):
        await fed(app, pilot)
        app.theme = "llmtop-light"
        colours["after"] = app.query_one("#tokens").colours()

    run_app(start_light, theme_name="llmtop-light")
    run_app(switch, theme_name="llmtop-dark")
    assert colours["after"] == colours["start"]


def test_smaller_items():
    """14.11: clear asks first; f says what it does; 1-5 maximise with header and footer kept,
    Esc restores; ctrl+c quits; the optimizations say waiting before the engine reports;
    the header names the model in words; a replay says REPLAY."""
    async def waiting(app, pilot):
        await pilot.pause()
        text = screen_text(app)
        assert "waiting for the engine to report" in text and "✗" not in text
        assert "starting the embedded SmolLM2-135M on the best device here" in text

    run_app(waiting, configure=Configure(device="auto"))

    async def keys(app, pilot):
        await fed(app, pilot)
        await pilot.press("f")
        await pilot.pause()
        assert any("profiling" in n.message for n in app._notifications)
        await pilot.press("c")
        await pilot.pause()
        assert "Clear the history" in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert app.session.rows
        await pilot.press("2")
        await pilot.pause()
        assert app.screen.maximized is app.query_one("#plot")
        text = screen_text(app).splitlines()
        assert "llmtop" in text[0] and "Help" in text[-1]
        assert app.query_one("#plot").region.height > 30
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.maximized is None
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app._exit_renderables is not None or not app.is_running or app.return_code is not None

    run_app(keys)

    async def replay(app, pilot):
        await fed(app, pilot)
        assert "REPLAY" in screen_text(app).splitlines()[0]

    run_app(replay, replay=type("R", (), {"messages": lambda self: iter(())})())
