"""Pilot test of tensor parallelism in the dashboard, against a real engine on the CPU: the tp
control reconfigures the engine to 2 ranks over gloo (synthetic:tiny: 8 heads, 4 KV heads),
the runs land in their own comparison row, and a step profile shows the all-reduce share."""

from __future__ import annotations

import pytest

from llmtop.engine.protocol import Configure, Generate
from llmtop.tui.analysis import COLLECTIVE_BOUND_PCT
from llmtop.tui.app import LlmtopApp
from textual.widgets import OptionList

from .helpers import run_async, screen_text, wait_for

pytestmark = pytest.mark.timeout(600)

SIZE = (160, 50)
RUN_TIMEOUT = 240


@pytest.fixture(scope="module", autouse=True)
def cpu_only():
    """CPU ranks run only where torch sees no GPU: hide any from the engine started here
    (autouse, so it is in place before the module's engine_client starts)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


def test_tp_control_splits_the_model_and_the_profile_shows_the_all_reduce_share(engine_client):
    async def body():
        app = LlmtopApp(Configure(model="synthetic:tiny", device="cpu"),
                        Generate(prompt_len=8, max_new_tokens=8, ignore_eos=True),
                        client=engine_client, telemetry=False)
        async with app.run_test(size=SIZE) as pilot:
            def done(tp: int) -> list:
                return [r for r in app.session.runs if r.record is not None and r.tp == tp]

            await wait_for(pilot, lambda: done(1), RUN_TIMEOUT, "a tp=1 run")
            await wait_for(pilot, lambda: app.session.model and app.session.device, 30,
                           "ModelInfo and DeviceInfo")
            app.redraw_all()
            await pilot.pause(0.2)
            ol = app.query_one("#opt-tp", OptionList)
            assert [ol.get_option_at_index(i).id for i in range(ol.option_count)] == ["tp=1", "tp=2"]
            assert not ol.get_option("tp=2").disabled
            ol.focus()
            ol.highlighted = ol.get_option_index("tp=2")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.desired.tp == 2, 5, "tp=2 chosen")
            await wait_for(pilot, lambda: app.session.model.tp == 2, RUN_TIMEOUT,
                           "the engine to reload on 2 ranks")
            assert app.session.model.devices == ["cpu", "cpu"]
            await wait_for(pilot, lambda: done(2), RUN_TIMEOUT, "a tp=2 run")
            # 2 ranks give the tokens of 1 (the same seeded weights, sharded)
            assert done(2)[0].ids == done(1)[0].ids
            labels = [row.label for row in app.session.rows.values()]
            assert labels[:2] == ["defaults", "tp=2"]
            await pilot.press("f")
            await wait_for(pilot, lambda: app.model.profiles, RUN_TIMEOUT, "a step profile")
            p = app.model.profiles[-1]
            assert p.tp == 2 and p.collective_calls > 0 and 0 < p.collective_pct < 100
            # the profile screen (drawn a moment later on a loaded machine)
            await wait_for(pilot, lambda: "collectives over 2 ranks (gloo all-reduce / all-gather)"
                           in screen_text(app), 20, "the profile screen's collectives line")
            assert f"{p.collective_pct:.0f}% of each decode step in all-reduce" in screen_text(app)
            await pilot.press("escape")
            assert app.model.collective_pct() == p.collective_pct
            app.redraw_all()
            if p.collective_pct >= COLLECTIVE_BOUND_PCT:   # the bottleneck line's first words
                want = f"bottleneck: collective-bound: {p.collective_pct:.0f}% of each"
                await wait_for(pilot, lambda: want in screen_text(app), 20, want)
            else:   # another verdict, the share at its end (wrapped: compare the words)
                await wait_for(pilot, lambda: "all-reduce across 2 ranks" in
                               " ".join(screen_text(app).split()), 20, "the share in the bottleneck")
            # back to one rank: the followers go, the tp=1 row collects the runs again
            app.select_tp(1)
            await wait_for(pilot, lambda: app.session.model.tp == 1, RUN_TIMEOUT,
                           "the engine to reload on 1 rank")
            before = len(done(1))
            await wait_for(pilot, lambda: len(done(1)) > before, RUN_TIMEOUT, "a tp=1 run again")

    run_async(body())
