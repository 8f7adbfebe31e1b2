"""The dashboard's logic without an engine: session bookkeeping, guard, bottleneck, themes,
run settings, help and palette completeness, the torch-free import."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys

from dataclasses import replace

import pytest

from llmtop.engine import catalogue
from llmtop.engine.protocol import (ConfigApplied, Configure, Error, Generate, RunDone, RunStarted,
                                    Status, Token)
from llmtop.tui import analysis, requests, state, theming
from llmtop.tui.app import LlmtopApp
from llmtop.tui.widgets.metrics import MetricsPanel
from llmtop.tui.requests import RunSettings
from llmtop.tui.widgets.token_stream import run_text

from . import fixed_session as fx
from .helpers import run_async, screen_text


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def fed_session() -> state.Session:
    s = state.Session()
    for ev in fx.engine_events():
        name = type(ev).__name__
        if name == "Status":
            s.on_status(ev)
        elif name == "ModelInfo":
            s.on_model(ev)
        elif name == "DeviceInfo":
            s.on_device(ev)
        elif name == "ConfigApplied":
            s.on_config(ev)
        elif name == "RunStarted":
            s.on_run_started(ev)
        elif name == "Token":
            s.on_token(ev)
        elif name == "RunDone":
            s.on_run_done(ev)
        elif name == "EngineEvent":
            s.on_engine_event(ev)
    return s


def test_import_leaves_torch_out():
    code = ("import sys; import llmtop.tui.app, llmtop.dashboard; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the UI imported {done.stdout.strip()} {done.stderr[-500:]}"


def test_live_metrics_match_the_engine_formulas():
    s = fed_session()
    live = s.current
    assert live is not None and not live.done and len(live.stamps) == len(fx.LAT_3)
    mt = live.metrics()
    assert mt["ttft_ms"] == pytest.approx(fx.LAT_3[0], abs=1e-3)
    assert mt["tpot_ms"] == pytest.approx(sum(fx.LAT_3[1:]) / (len(fx.LAT_3) - 1), abs=1e-3)
    assert live.latencies_ms() == pytest.approx(fx.LAT_3, abs=1e-3)
    roof = s.live_roofline(live)
    assert 0 < roof["decode_pct"] < 100 and roof["decode_floor_ms"] > 0


def test_comparison_rows_speedup_and_guard():
    s = fed_session()
    rows = list(s.rows.values())
    assert [r.label for r in rows] == ["defaults", "attention=eager"]
    assert s.baseline == rows[0].key
    assert s.speedup(rows[0]) == (pytest.approx(1.0), "TPOT")
    assert s.speedup(rows[1]) == (pytest.approx(rows[0].tpot_ms / rows[1].tpot_ms), "TPOT")
    assert s.guard(rows[0]) == ("baseline", "baseline")
    assert s.guard(rows[1]) == ("identical", "identical (1)")
    # a run whose greedy tokens differ from the baseline's at token 3
    r = rows[1].runs[0]
    r.ids = r.ids[:3] + [999999] + r.ids[4:]
    assert s.guard(rows[1]) == ("diverged", "diverged @3")
    # the engine's own guard, when present, wins: three states, only diverged is an alarm
    rows[1].guards = {"equivalent": 1}
    rows[1].diverged_at = 9
    assert s.guard(rows[1]) == ("equivalent", "≈ equivalent @9")
    rows[1].guards["diverged"], rows[1].diverged_at = 1, 7
    assert s.guard(rows[1]) == ("diverged", "diverged @7")
    s.set_baseline(rows[1].key)
    assert s.speedup(rows[1]) == (pytest.approx(1.0), "TPOT")


def test_markers_for_config_changes_and_engine_events():
    s = fed_session()
    kinds = [(m.kind, m.label) for m in s.markers]
    assert ("config", "attention=eager") in kinds
    assert any(k == "recompile" for k, _ in kinds)
    config_step = next(m.step for m in s.markers if m.kind == "config")
    assert config_step == len(fx.LAT_1)       # placed where run 2 begins
    recompile = next(m for m in s.markers if m.kind == "recompile")
    assert s.current.first_step <= recompile.step <= s.steps


def test_plot_series_and_window():
    s = fed_session()
    xs, ys, tx, ty = s.plot_series()
    assert ty == pytest.approx([fx.LAT_1[0], fx.LAT_2[0], fx.LAT_3[0]], abs=1e-3)
    assert len(xs) == len(fx.LAT_1) + len(fx.LAT_2) + len(fx.LAT_3) - 3
    xs, ys, tx, ty = s.plot_series(window=4)
    assert len(xs) + len(tx) == 4


def test_clear_keeps_the_streaming_run():
    s = fed_session()
    live = s.current
    s.clear()
    assert s.rows == {} and list(s.markers) == [] and list(s.runs) == [live]


def test_latency_colouring():
    assert state.latency_class(40, 40) == "ok"
    assert state.latency_class(55, 40) == "slow"
    assert state.latency_class(97, 40) == "spike"
    s = fed_session()
    colours = {"ok": "white", "slow": "yellow", "spike": "red", "ttft": "cyan", "muted": "grey50"}
    run = s.rows[next(iter(s.rows))].runs[0]
    text = run_text(run, colours)
    spans = [(text.plain[sp.start:sp.end], str(sp.style)) for sp in text.spans]
    start = next(i for i, (piece, _) in enumerate(spans) if piece == fx.TEXT_1[0])
    tokens = spans[start:start + len(fx.TEXT_1)]
    assert [piece for piece, _ in tokens] == fx.TEXT_1
    styles = [style for _, style in tokens]
    assert "cyan" in styles[0]                                  # the first token: TTFT
    assert "red" in styles[fx.LAT_1.index(97.4)]                # 2.4x the median step
    assert styles[fx.LAT_1.index(55.3)] == "yellow"             # 1.36x
    assert styles[1] == "white"
    assert sum("red" in st for st in styles) == 1 and styles.count("yellow") == 1
    # a chat run's answer starts a line of its own; a continuation follows its prompt
    assert run_text(run, colours).plain.startswith(f"#{run.run_id} {run.prompt}{fx.TEXT_1[0]}")
    run.chat = True
    assert f"{run.prompt}\n→ {fx.TEXT_1[0]}" in run_text(run, colours).plain


def test_footer_shows_one_key_per_binding():
    """ "? Help", not "question_mark,f1 Help" (a binding of two keys shows its first)."""
    async def body(app, pilot):
        await pilot.pause()
        line = screen_text(app).splitlines()[-1]
        assert "? Help" in line and "question_mark" not in line and "," not in line

    run_app(body)


@pytest.mark.parametrize("device,roof,busy,kind", [
    ("cuda", {"decode_pct": 85, "prefill_pct": 10, "achieved_gb_s": 2500}, 95, "memory"),
    ("cuda", {"decode_pct": 20, "prefill_pct": 10, "achieved_gb_s": 600}, 30, "launch"),
    ("cuda", {"decode_pct": 20, "prefill_pct": 70, "achieved_gb_s": 600}, 90, "compute"),
    ("cuda", {"decode_pct": 30, "prefill_pct": 10, "achieved_gb_s": 900}, 90, "kernel"),
    ("cpu", {"decode_pct": 20, "prefill_pct": 3, "achieved_gb_s": 7}, None, "overhead"),
    ("cpu", None, None, "none"),
])
def test_bottleneck(device, roof, busy, kind):
    got, line = analysis.bottleneck(device, roof, busy)
    assert got == kind and line
    if kind == "launch":
        assert "try compile=full" in line


def test_bottleneck_advice_names_only_what_the_run_has_not_applied():
    cpu = {"decode_pct": 20, "prefill_pct": 3, "achieved_gb_s": 7}
    gpu = {"decode_pct": 20, "prefill_pct": 10, "achieved_gb_s": 600}
    line = lambda dev, roof, busy, **o: analysis.bottleneck(dev, roof, busy, opts=o)[1]  # noqa: E731
    assert line("cpu", cpu, None, kv="dynamic").endswith("dominates: try kv=static")
    assert line("cpu", cpu, None, kv="static", backend="hf").endswith(": try backend=native")
    assert line("cpu", cpu, None, kv="static", backend="native").endswith("dominates")
    assert line("cuda", gpu, 30, compile="off").endswith(": try compile=full (kv=static)")
    assert line("cuda", gpu, 30, compile="full", backend="hf").endswith(": try backend=native")
    assert "try" not in line("cuda", gpu, 30, compile="full", backend="native")


def test_formatting_never_invents_zero():
    assert analysis.num(None) == "n/a" and analysis.num(math.nan) == "n/a"
    assert analysis.bar(0.5, 8) == "████    "
    assert analysis.sparkline([0, 50, 100], 3, 100) == "▁▅█"


def test_shipped_themes_load_and_user_themes_are_found(tmp_path, monkeypatch):
    themes = theming.builtin_themes()
    assert {"llmtop-dark", "llmtop-light", "llmtop-high-contrast", "llmtop-rocm"} <= set(themes)
    assert themes["llmtop-light"].dark is False
    folder = tmp_path / "config" / "llmtop" / "themes"
    folder.mkdir(parents=True)
    (folder / "mine.toml").write_text('name = "mine"\n[colors]\nprimary = "#123456"\n')
    (folder / "broken.toml").write_text('name = "broken"\n[colors]\nprimary = "not a colour"\n')
    mine, problems = theming.user_themes()
    assert "mine" in mine and len(problems) == 1 and "broken.toml" in problems[0]
    assert theming.resolve("light", themes) == ("llmtop-light", None)
    with pytest.raises(theming.ThemeError):
        theming.resolve("no-such-theme", themes)
    app = LlmtopApp(start_engine=False, telemetry=False, theme_name="mine")
    assert app.theme == "mine"


def test_run_settings_validate_and_build_requests():
    s = RunSettings.from_request(Generate(prompt="The largest continent is", max_new_tokens=8),
                                 "The largest continent is")
    assert s.prompt is None      # the study's prompt means: loop over the prompt set
    prompts = [s.request(i, i).prompt for i in range(len(requests.PROMPT_SET))]
    assert prompts == list(requests.PROMPT_SET) and prompts[0] == "The largest continent is"
    s = s.with_field("prompt", "Why is the sky blue?").with_field("batch", "4")
    req = s.request(7, 3)
    assert req.prompt == "Why is the sky blue?" and req.batch == 4 and req.run_id == 7
    assert s.with_field("prompt_len", "128").request(1, 0).prompt is None
    for name, bad in (("batch", "0"), ("batch", "x"), ("max_new_tokens", "-1"), ("top_p", "1.5"),
                      ("temperature", "2.5")):
        with pytest.raises(ValueError):
            s.with_field(name, bad)
    assert s.with_field("temperature", "2").temperature == 2.0   # vLLM's limit, every backend's
    # every request field the CLI set survives into the loop's requests; chat and seeds per run
    cli = Generate(messages=[{"role": "user", "content": "Why?"}], batch=2, max_new_tokens=5,
                   sample=True, temperature=0.5, top_p=0.8, top_k=7, seed=3, ignore_eos=True,
                   profile_steps=4)
    req = RunSettings.from_request(cli, "The largest continent is").request(run_id=2, index=0)
    assert type(req) is Generate and req.messages == cli.messages and req.prompt is None
    assert (req.batch, req.max_new_tokens, req.temperature, req.top_p, req.top_k, req.ignore_eos) == \
        (2, 5, 0.5, 0.8, 7, True)
    assert req.seed == 3 + 2 and req.profile_steps == 0   # profiles are asked for with f


def run_app(body, size: tuple[int, int] = (160, 50), **kw):
    async def main():
        app = LlmtopApp(start_engine=False, telemetry=False, **kw)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
    asyncio.run(main())


@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
def test_narrow_terminal_keeps_header_tokens_and_latency_figures(size):
    """Below STACK_BELOW columns the panels stack; the first screen must still show the header,
    the newest tokens and every latency figure whole (both columns, as the panel formats them)."""
    from llmtop.tui.widgets.metrics import COMPACT_LABELS, LABELS, metric_rows

    async def body(app, pilot):
        fx.feed(app)
        await pilot.pause()
        app.redraw_all()
        await pilot.pause()
        assert app.screen.has_class("-stacked")
        lines = screen_text(app).splitlines()
        assert len(lines) == size[1]
        assert "llmtop SmolLM2-135M-Instruct" in lines[0] and "▶ generating run 3" in lines[0]
        assert "attention eager" in lines[1]
        text = "\n".join(lines)
        assert "#3 The three primary colors are red, yellow and blue▌" in text
        s = app.session
        run = s.current_or_last()
        live = metric_rows(run.metrics(), s.live_roofline(run), s.device.mem_bw_gb_s)
        sess = s.session_metrics(run.key)
        config = metric_rows(sess, sess.get("roofline"), s.device.mem_bw_gb_s)
        shown = 0
        for label, a, b in zip(LABELS, live, config):
            row = next((line for line in lines if line.strip("│ ").startswith(label + "  ")), None)
            if label in COMPACT_LABELS or row is not None:
                assert row is not None, f"{label} is not on the first screen"
                assert a in row and b in row, f"{label}: {a!r} / {b!r} cut in {row!r}"
                shown += 1
        assert shown >= len(COMPACT_LABELS)
        assert "bottleneck: overhead-bound" in text

    run_app(body, size=size)


def test_resizing_switches_between_side_by_side_and_stacked():
    async def body(app, pilot):
        fx.feed(app)
        await pilot.pause()
        tokens = app.screen.query_one("#tokens")
        assert not app.screen.has_class("-stacked")
        assert app.screen.query_one("#metrics").display and not app.screen.query_one("#metrics-stacked").display
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.screen.has_class("-stacked")
        assert app.screen.query_one("#metrics-stacked").display and not app.screen.query_one("#metrics").display
        assert tokens.region.y == 2 and tokens.region.bottom <= 24 - 1 - MetricsPanel.compact_height()
        await pilot.press("o")       # the tabs are below the first screen: the key brings them up
        await pilot.pause()
        assert "Optimize o" in screen_text(app) and "#3 The three" not in screen_text(app)
        await pilot.press("ctrl+up", "ctrl+up", "ctrl+up")
        await pilot.pause()
        assert "#3 The three primary colors" in screen_text(app)
        await pilot.resize_terminal(160, 50)
        await pilot.pause()
        assert not app.screen.has_class("-stacked")
        assert tokens.styles.height is not None and tokens.styles.height.value == 1   # 1fr again
        assert "config · 1 run" in screen_text(app)   # the full table, side by side

    run_app(body)


def test_help_lists_every_key_and_palette_has_every_toggle():
    async def body(app, pilot):
        fx.feed(app)
        await pilot.press("question_mark")
        await pilot.pause()
        text = screen_text(app)
        for binding in app.key_bindings():
            for key in binding.key.split(","):
                shown = app.get_key_display(type(binding)(key, ""))
                assert shown in text, f"help does not list {key}"
            assert (binding.tooltip or binding.description)[:40] in text
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for axis, options in catalogue.AXES.items():
            for name in options:
                assert f"Optimization: {axis} = {name}" in titles
        for preset in catalogue.PRESETS:
            assert f"Preset: {preset}" in titles
        for needed in ("Pause", "Restart engine", "Save", "Clear", "Sampling on/off", "Theme: llmtop-rocm"):
            assert needed in titles

    run_app(body)


def test_help_scrolls_to_its_last_key_at_80x24():
    """The key list is longer than 24 rows: the help screen must scroll, not cut it off."""
    from textual.containers import VerticalScroll

    from llmtop.tui.screens.help import WIDGET_KEYS, HelpScreen

    async def body(app, pilot):
        fx.feed(app)
        await pilot.press("question_mark")
        await pilot.pause()
        scroller = app.screen.query_one(VerticalScroll)
        assert scroller.max_scroll_y > 0 and scroller.region.bottom <= 24
        last = WIDGET_KEYS[-1][1]   # "this screen, palette, profile": the last row
        assert last not in screen_text(app)
        await pilot.press("end")
        await pilot.pause()
        assert scroller.scroll_y == scroller.max_scroll_y and last in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)

    run_app(body, size=(80, 24))


def test_unavailable_option_refused_offline_and_theme_key_cycles():
    async def body(app, pilot):
        fx.feed(app)
        before = dict(app.desired.opts)
        assert app.select_option("attention", "cudnn") is False
        assert app.desired.opts == before
        assert app.select_option("kv", "static") is True
        assert app.model.pending_changes() == ["kv=static"]
        assert app.select_option("compile", "full") is True   # needs kv=static: fine now
        assert app.model.conflict() is None
        app.select_option("kv", "dynamic")
        assert app.model.conflict() and "kv=static" in app.model.conflict()
        first = app.theme
        await pilot.press("t")
        assert app.theme != first

    run_app(body)


def test_save_session_writes_every_record(tmp_path):
    async def body(app, pilot):
        fx.feed(app)
        await pilot.press("ctrl+s")
        for _ in range(50):
            await pilot.pause(0.05)
            if list(tmp_path.glob("llmtop-session-*.json")):
                break
        files = list(tmp_path.glob("llmtop-session-*.json"))
        assert len(files) == 1
        data = json.loads(files[0].read_text())
        assert data["schema"] == "llmtop.session/1"
        assert [r["metrics"]["n_tokens"] for r in data["runs"]] == [16, 16]
        assert [row["configuration"] for row in data["comparison"]] == ["defaults", "attention=eager"]

    run_app(body, session_dir=tmp_path)


def test_pause_and_clear_keys():
    async def body(app, pilot):
        fx.feed(app)
        await pilot.press("space")
        assert app.model.paused
        assert "paused" in screen_text(app)
        await pilot.press("space")
        assert not app.model.paused
        await pilot.press("c")          # asks first (issue 14.11)
        await pilot.pause()
        assert app.session.rows != {}
        await pilot.press("y")
        await pilot.pause()
        assert app.session.rows == {}

    run_app(body)


def test_profile_key_and_profile_screen():
    from llmtop.engine.protocol import StepProfile

    async def body(app, pilot):
        fx.feed(app)
        await pilot.press("f")
        assert app.model.profile_pending == 8
        app.client = type("FakeClient", (), {"send": lambda self, c: sent.append(c), "pid": 1})()
        app.model.engine_up, app.model.busy = True, False
        app.model.step()
        assert sent and sent[-1].profile_steps == 8 and app.model.profile_pending == 0
        app.handle_event(StepProfile(run_id=3, steps=8, device="gpu", step_ms=44.0, busy_ms=8.0,
                                     idle_ms=36.0, top_kernels=[{"name": "ampere_bf16_gemm_128x64",
                                                                 "calls": 1792, "device_ms": 40.1,
                                                                 "pct": 62.5}],
                                     trace_path="/tmp/trace.json"))
        await pilot.pause()
        text = screen_text(app)
        assert "step profile" in text and "ampere_bf16_gemm_128x64" in text
        assert "18% busy" in text and "launch-bound" in text
        from llmtop.tui.screens.profile import ProfileScreen, verdict
        p = app.model.profiles[-1]
        # run 3 is not in this session: the screen advises from the desired options (compile=off)
        assert app.screen.opts == app.model.desired.opts and isinstance(app.screen, ProfileScreen)
        assert verdict(p, app.screen.opts).endswith("(launch-bound: try compile=full with kv=static)")
        assert verdict(p, {"compile": "full", "backend": "hf"}).endswith(
            "(launch-bound: try backend=native)")
        assert verdict(p, {"compile": "full", "backend": "native"}).endswith("(launch-bound)")
        assert app.model.gpu_busy_pct() == pytest.approx(100 * 8 / 44)
        app.client = None

    sent: list = []
    run_app(body)


# ---- tensor parallelism: size control, collective share, the engine's GPUs ---------------------

def test_tp_sizes_split_whole_heads_and_fit_the_devices():
    from llmtop.tui.analysis import tp_choices

    # the embedded SmolLM2 (9 heads, 3 KV heads) on a CPU: 2 ranks do not split its heads
    assert tp_choices(9, 3, "cpu", 0) == [
        (1, True, ""), (2, False, "does not divide 9 attention heads and 3 KV heads")]
    assert [(n, ok) for n, ok, _ in tp_choices(8, 4, "cpu", 0)] == [(1, True), (2, True)]
    # a CPU device where torch sees a GPU: the engine refuses CPU ranks there
    assert tp_choices(8, 4, "cpu", 2)[1][:2] == (2, False)
    # Llama-2-70B's shape (64 heads, 8 KV heads) on 8 GPUs; on 3 GPUs only what fits
    assert [n for n, ok, _ in tp_choices(64, 8, "cuda:0", 8) if ok] == [1, 2, 4, 8]
    assert [(n, ok) for n, ok, _ in tp_choices(9, 3, "cuda:0", 4)] == [
        (1, True), (2, False), (3, True), (4, False)]
    assert [n for n, ok, _ in tp_choices(32, 32, "cuda:0", 3) if ok] == [1, 2]


def test_bottleneck_names_the_all_reduce_share_with_several_ranks():
    roof = {"decode_pct": 30.0, "prefill_pct": 5.0, "achieved_gb_s": 1000.0}
    kind, line = analysis.bottleneck("cuda:0", roof, 90.0, 45.0, 2)
    assert kind == "collective"
    assert line.startswith("collective-bound: 45% of each decode step in all-reduce across 2 ranks")
    # below the threshold the usual verdict stands, with the share after it
    kind, line = analysis.bottleneck("cuda:0", roof, 90.0, 12.0, 2)
    assert kind == "kernel" and line.endswith("; 12% of each decode step in all-reduce across 2 ranks")
    kind, line = analysis.bottleneck("cuda:0", roof, 90.0, None, 4)
    assert line.endswith("all-reduce share of a step across 4 ranks not measured yet (f profiles)")
    # one rank: no collectives, the line is what it always was
    assert analysis.bottleneck("cuda:0", roof, 90.0, None, 1) == analysis.bottleneck("cuda:0", roof, 90.0)


def _tp_model(device: str, gpus: list[int], tp: int = 2):
    from dataclasses import replace

    devices = [f"cuda:{k}" for k in range(tp)] if device.startswith("cuda") else [device] * tp
    return replace(fx.MODEL, name="synthetic-tiny", heads=8, kv_heads=4, device=devices[0], tp=tp,
                   devices=devices, gpus=gpus,
                   gpu_choice="recommended by the link matrix (NV4)" if gpus else "")


def test_profile_screen_and_bottleneck_show_the_collective_share():
    from llmtop.engine.protocol import StepProfile

    async def body(app, pilot):
        fx.feed(app)
        app.handle_event(_tp_model("cpu", [], tp=2))
        app.handle_event(StepProfile(run_id=3, steps=4, device="cpu", step_ms=50.0, busy_ms=15.0,
                                     idle_ms=35.0, top_kernels=[{"name": "c10d::allreduce_",
                                                                 "calls": 50, "device_ms": 9.0,
                                                                 "pct": 20.0}],
                                     trace_path="/tmp/trace.json", tp=2, collective_ms=26.1,
                                     collective_pct=57.4, collective_calls=50))
        await pilot.pause()
        text = screen_text(app)
        assert "collectives over 2 ranks (gloo all-reduce / all-gather): 26.10 ms" in text
        assert "57% of each decode step in all-reduce" in text
        assert "collective-bound: 57% of each decode step in all-reduce across 2 ranks" in text
        await pilot.press("escape")
        assert app.model.collective_pct() == pytest.approx(57.4)
        app.redraw_all()
        await pilot.pause()
        assert "bottleneck: collective-bound: 57% of each" in screen_text(app)  # metrics panel
        # a profile taken at another TP size says nothing of this one
        app.handle_event(_tp_model("cpu", [], tp=4))
        assert app.model.collective_pct() is None

    run_app(body)


def test_gpu_panel_marks_the_engines_ranks():
    async def body(app, pilot):
        fx.feed(app, gpus=2)
        app.handle_event(_tp_model("cuda", [1, 0]))
        await pilot.press("g")
        app.redraw_all()
        await pilot.pause()
        lines = screen_text(app).splitlines()
        assert any("engine tp 2 on GPUs 1, 0: recommended by the link matrix" in ln
                   for ln in lines)
        gpu1 = next(ln for ln in lines if "GPU1 " in ln and "engine rank" in ln)
        gpu0 = next(ln for ln in lines if "GPU0 " in ln and "engine rank" in ln)
        assert "◆ engine rank 0" in gpu1 and "◆ engine rank 1" in gpu0
        assert any("◆ TP=2: GPUs 0,1: weakest link it must cross 450 GB/s" in ln for ln in lines)

    run_app(body)


def test_tp_control_reconfigures_between_runs():
    from dataclasses import replace

    async def body(app, pilot):
        fx.feed(app)
        # the engine reports a model whose heads 2 ranks split, on a CPU without a GPU
        app.handle_event(replace(fx.MODEL, heads=8, kv_heads=4))
        await pilot.pause()
        app.redraw_all()
        await pilot.pause()
        ol = app.query_one("#opt-tp")
        assert not ol.get_option("tp=2").disabled
        assert app.select_tp(3) is False and app.desired.tp == 1   # not offered: refused
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Tensor parallel: tp = 2" in titles   # the command palette offers it too
        ol.focus()
        ol.highlighted = ol.get_option_index("tp=2")
        await pilot.press("enter")
        assert app.desired.tp == 2 and "tp=2" in app.model.pending_changes()
        app.client = type("FakeClient", (), {"send": lambda self, c: sent.append(c), "pid": 1})()
        app.model.engine_up, app.model.busy = True, False
        app.model.step()
        assert isinstance(sent[-1], Configure) and sent[-1].tp == 2 and sent[-1].gpus is None
        # the engine refuses it (say, a follower could not start): back to what runs
        app.handle_event(Error("config", "tensor-parallel llmtop-tp-rank1 exited (code 1)"))
        app.handle_event(Status("ready", ""))
        assert app.desired.tp == 1 and app.model.pending_changes() == []
        # accepted: the comparison keeps tp=2 runs in their own row
        app.desired.tp = 2
        app.handle_event(ConfigApplied(replace(fx.config(fx.opts()), tp=2), "loaded", 1.0))
        app.handle_event(RunStarted(9, ["x"], 5, 1, 16, 1_000))
        assert app.session.current.key.endswith("|tp2|bs1|text")
        assert any(m.kind == "config" and "tp=2" in m.label for m in app.session.markers)
        app.client = None

    sent: list = []
    run_app(body)


def test_header_shows_the_load_step_its_bar_and_share():
    """18.5: a first start says which step runs (the one-time conversion as such), with a bar."""
    async def body(app, pilot):
        step = "first start only: dequantizing the GGUF weights to bf16"
        app.handle_event(Status("loading", step, 0.14, 12.0))
        app.redraw_all()
        await pilot.pause()
        top = "\n".join(screen_text(app).splitlines()[:2])
        assert step in top and "14%" in top and "█" in top, top
        app.handle_event(Status("ready", "waiting for a configuration"))
        app.redraw_all()
        await pilot.pause()
        assert step not in screen_text(app)

    run_app(body)


def test_closed_screens_leave_no_rendered_lines_behind():
    """Issue 14.10: a command palette opened and closed again and again (as a toggle does) must
    not keep its widgets' line caches alive. Textual's StylesCache.get_inner_outer lru_cache held
    every widget's StylesCache (tui/textual_fixes.py); their number must not grow with the opens."""
    import gc

    from textual._styles_cache import StylesCache

    def live() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, StylesCache))

    async def main():
        app = LlmtopApp(start_engine=False, telemetry=False)
        async with app.run_test(size=(120, 40)) as pilot:
            fx.feed(app)
            counts = []
            for opens in range(12):
                await pilot.press("ctrl+p")
                await pilot.pause()
                await pilot.press("escape")
                await pilot.pause()
                if opens in (1, 11):
                    counts.append(live())
            return counts

    first, last = run_async(main())
    assert last - first <= 5, f"{last - first} StylesCache kept after 10 more palette opens"


def test_o_puts_the_cursor_in_the_first_axis_list():
    """A person presses o, then the arrows and Enter (issue 14.8): no Tab hunt for the list."""
    async def body(app, pilot):
        fx.feed(app)
        await pilot.pause()
        await pilot.press("o")
        await pilot.pause()
        assert app.focused is app.query_one("#opt-attention")
        assert app.focused.highlighted is not None

    run_app(body)


def test_rendered_styles_are_not_kept_by_the_escape_code_cache():
    """Issue 14.10: every segment Textual renders has a style of its own (its meta holds the
    screen offset), and Strip.render_ansi's lru_cache(16384) kept each one alive: the UI grew
    for the first half hour of a session. Keyed on the colours (tui/textual_fixes.py), the
    codes are the same and no style stays behind."""
    import gc

    from rich.color import ColorSystem
    from rich.style import Style as RichStyle
    from textual.strip import Strip

    from llmtop.tui import app as _app  # noqa: F401  (installs the workarounds)

    def live() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is RichStyle)

    kinds = [dict(color="red", bold=True), dict(color="#102030", bgcolor="yellow", italic=True),
             dict(underline=True, reverse=True), dict(bgcolor="blue", dim=True), dict()]
    before = live()
    for i in range(3000):
        style = RichStyle(**kinds[i % len(kinds)], meta={"offset": (i % 160, i // 160)})
        for system in (ColorSystem.TRUECOLOR, ColorSystem.EIGHT_BIT, ColorSystem.STANDARD):
            plain = RichStyle(**kinds[i % len(kinds)])          # the same codes, no offset
            assert Strip.render_ansi(style, system) == Strip.render_ansi(plain, system)
            Strip.render_style(style, "x", system)
        del style
    assert live() - before <= 10


def test_the_dashboards_sampler_keeps_only_what_its_panels_show():
    """Issue 14.10: the sampler's own ring buffers defaulted to 6000 polls (25 minutes at the
    dashboard's 4 Hz), which the dashboard never reads back; the UI grew with them for the
    first 25 minutes of a session. Polled fast here, they must stop at the panels' history."""
    async def main():
        app = LlmtopApp(start_engine=False, telemetry=True, telemetry_hz=400)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause(0.1)
                sampler = getattr(app, "_sampler", None)
                if sampler is not None and sampler.cost().polls > 2 * app.telemetry.HISTORY:
                    break
            assert sampler is not None and sampler.cost().polls > 2 * app.telemetry.HISTORY
            return len(sampler.host_history())

    assert run_async(main()) <= LlmtopApp(start_engine=False).telemetry.HISTORY


@pytest.mark.parametrize("size", [(160, 48), (100, 30)])
def test_a_long_configuration_label_is_shortened_not_the_guard_or_the_figures(size):
    """Issue 14.7, seen in a person's session at 160x48: a three-axis label widened the
    comparison's configuration column until the guard's verdict ran past the border
    ("≈ equivalen"). The label gives way, with an ellipsis; every other cell stays whole."""
    from llmtop.engine.protocol import Status
    from llmtop.tui.widgets.comparison import ComparisonTable

    async def body(app, pilot):
        fx.feed(app)
        long = fx.opts(attention="eager", kv="static", dtype="fp32", gemm="tunableop")
        app.handle_event(ConfigApplied(fx.config(long), "loaded", 1.0))
        app.handle_event(Status("ready", ""))
        for ev in fx.run_events(4, "The largest continent is", fx.TEXT_1, fx.LAT_2,
                                20_000_000_000, long):
            app.handle_event(ev)
        app.redraw_all()
        await pilot.pause()
        app.action_show_tab("run")
        table = app.query_one(ComparisonTable)
        for _ in range(40):   # the scroll lands after a refresh or two (later under load)
            table.scroll_visible(animate=False)
            await pilot.pause(0.05)
            lines = screen_text(app).splitlines()
            if any("─ comparison ·" in ln for ln in lines):
                break
        lines = lines[next(i for i, ln in enumerate(lines) if "─ comparison ·" in ln):]
        rows = list(app.session.rows.values())
        assert any(len(r.label) > 40 for r in rows)
        shortened = False
        for row in rows:
            state_, guard = app.session.guard(row)
            tpot = analysis.num(row.tpot_ms, 2)
            whole = [ln for ln in lines if f" {row.label} " in ln]
            cut = [ln for ln in lines if "…" in ln and row.label[:20] in ln]
            line = next(iter(whole or cut), None)
            assert line is not None and f" {tpot} " in line, f"{row.label}: {tpot}\n" + "\n".join(lines)
            assert guard in line and analysis.num(row.tokens_per_s, 1) in line, line
            shortened |= row.label not in line and "…" in line
        assert shortened or size[0] > 200, "\n".join(lines)

    run_app(body, size=size)


def test_a_failed_configuration_keeps_its_reason_in_the_optimize_tab():
    """After the toast has gone: a failure one option leads back to is told beside that option;
    one of two options changed at once (flex + static + compile=full on a CPU) under the
    options' legend, since no single option reproduces it."""
    from llmtop.tui.model import config_id
    from llmtop.tui.widgets.optimizations import OptimizationsPanel

    async def body(app, pilot):
        fx.feed(app)
        model = app.model
        one = replace(model.desired, opts={**model.desired.opts, "kv": "static"})
        two = replace(model.desired, opts={**model.desired.opts, "kv": "static",
                                           "compile": "full"})
        model.failed[config_id(one)] = "boom-one"
        model.failed[config_id(two)] = "kv=static compile=full failed: boom-two"
        await pilot.press("o")
        app.query_one(OptimizationsPanel).redraw_now()
        await pilot.pause()
        text = screen_text(app)
        assert "failed here: boom-one" in text and text.count("boom-one") == 1
        assert "✗ kv=static compile=full failed: boom-two" in text

    run_app(body)
