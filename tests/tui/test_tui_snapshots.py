"""Snapshots of the dashboard fed a fixed session (no engine, no sampler, no timers running).

Update after an intended visual change with: pytest tests/tui/test_tui_snapshots.py --snapshot-update
and look at the SVGs under __snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest

from llmtop.tui.app import LlmtopApp

from .fixed_session import feed

SIZE = (160, 50)


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """The user's own theme folder must not leak into snapshots."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))


def make(theme: str) -> LlmtopApp:
    return LlmtopApp(start_engine=False, telemetry=False, theme_name=theme)


def fed(gpus: int = 0, keys: tuple[str, ...] = ()):
    async def run_before(pilot) -> None:
        feed(pilot.app, gpus)
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        pilot.app.redraw_all()
        await pilot.pause()
    return run_before


def test_main_screen_dark(snap_compare):
    assert snap_compare(make("llmtop-dark"), terminal_size=SIZE, run_before=fed())


def test_main_screen_light(snap_compare):
    assert snap_compare(make("llmtop-light"), terminal_size=SIZE, run_before=fed())


def test_help_screen(snap_compare):
    assert snap_compare(make("llmtop-dark"), terminal_size=SIZE, run_before=fed(keys=("question_mark",)))


def test_gpu_tab_two_gpus_rocm_theme(snap_compare):
    assert snap_compare(make("llmtop-rocm"), terminal_size=SIZE, run_before=fed(gpus=2, keys=("g",)))


# Narrow terminals: the panels stack in one scrollable column (tui/app.py STACK_BELOW); the first
# screen keeps the header, the tokens and the latency figures; o brings the tabs up.

def test_main_screen_80x24(snap_compare):
    assert snap_compare(make("llmtop-dark"), terminal_size=(80, 24), run_before=fed())


def test_main_screen_100x30_light(snap_compare):
    assert snap_compare(make("llmtop-light"), terminal_size=(100, 30), run_before=fed())


def test_optimize_tab_80x24(snap_compare):
    assert snap_compare(make("llmtop-dark"), terminal_size=(80, 24), run_before=fed(keys=("o",)))


def test_main_screen_160x48(snap_compare):
    """The size of issue 14's hour-long try: no figure cut (test_tui_demo checks the text)."""
    assert snap_compare(make("llmtop-dark"), terminal_size=(160, 48), run_before=fed())
