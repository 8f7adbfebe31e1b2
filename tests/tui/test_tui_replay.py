"""A session the dashboard records replays in the dashboard and rebuilds the same table."""

from __future__ import annotations

import pytest

from llmtop.engine.session_log import ReplaySource, read_session
from llmtop.tui.app import LlmtopApp

from . import fixed_session as fx
from .helpers import run_async


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def rows(app: LlmtopApp) -> list[tuple[str, int, float, float]]:
    return [(r.label, len(r.runs), round(r.ttft_ms, 6), round(r.tpot_ms, 6))
            for r in app.session.rows.values()]


def record(path) -> list:
    async def go():
        app = LlmtopApp(start_engine=False, telemetry=False, record=path)
        async with app.run_test(size=(160, 45)) as pilot:
            for ev in fx.engine_events():
                app.handle_event(ev)
            await pilot.pause()
        return rows(app)
    return run_async(go())


def replay(path) -> tuple[list, list[str]]:
    """Rows and notifications once the replay has said it ended (or stopped at damage)."""
    async def go():
        app = LlmtopApp(replay=ReplaySource(path, speed=0))
        async with app.run_test(size=(160, 45)) as pilot:
            for _ in range(200):
                await pilot.pause(0.05)
                if list(app._notifications):
                    break
            notes = [str(n.message) for n in app._notifications]
        return rows(app), notes
    return run_async(go())


def test_recorded_session_replays_with_the_same_comparison_table(tmp_path):
    path = tmp_path / "session.jsonl"
    recorded = record(path)
    assert len(recorded) == 2                     # defaults and attention=eager
    events, problem = read_session(path)
    assert problem is None and len(events) == len(fx.engine_events())  # every engine event
    replayed, notes = replay(path)
    assert replayed == recorded
    assert notes == ["replay finished"]


def test_a_cut_session_replays_up_to_the_damage_and_says_where(tmp_path):
    path = tmp_path / "session.jsonl"
    record(path)
    lines = path.read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"RunDone"' in line) + 3  # after run 1
    path.write_text("\n".join(lines[:cut]) + "\n" + lines[cut][: len(lines[cut]) // 2])
    replayed, notes = replay(path)
    assert len(replayed) == 1 and replayed[0][0] == "defaults"
    assert any(f"line {cut + 1}" in str(n) for n in notes), notes
