"""Keys typed right after / reach the prompt field, even when the UI lags behind the terminal.

The traced soak (benchmarks/tui_soak.py --trace) typed "What is the capital of France?" 0.9 s
after /, into a UI seconds behind its input: / focused the field only after a refresh, so the
letters behind it were the dashboard's keys (a space paused the loop, an s stopped the run, t
changed the theme) and the loop stayed paused for the rest of the soak. Here the keys arrive as
one burst, queued before / is handled, as a lagging UI reads them.
"""

from __future__ import annotations

import asyncio
import unicodedata

import pytest
from textual import events
from textual.app import _character_to_key
from textual.keys import REPLACED_KEYS, _get_unicode_name_from_key
from textual.widgets import Input

from llmtop.engine.protocol import Stop
from llmtop.tui.app import LlmtopApp
from llmtop.tui.screens.help import HelpScreen

from . import fixed_session as fx
from .helpers import Sent

PROMPT = "What is the capital of France? ctbfsx"


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def burst(app, keys) -> None:
    """Every key into the app's queue at once, before any is handled (pilot.press waits for
    the app to go idle after each key)."""
    for key in keys:
        if len(key) == 1 and not key.isalnum():
            key = _character_to_key(key)
        try:
            char = unicodedata.lookup(_get_unicode_name_from_key(REPLACED_KEYS.get(key, key)))
        except KeyError:
            char = key if len(key) == 1 else None
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)


def run_app(body):
    async def main():
        app = LlmtopApp(start_engine=False, telemetry=False)
        async with app.run_test(size=(160, 48)) as pilot:
            fx.feed(app)
            client = Sent()
            app.client = client
            app.model.engine_up, app.model.busy = True, False
            await pilot.pause()
            app.redraw_all()
            await pilot.pause()
            await body(app, pilot, client)
    asyncio.run(main())


def test_a_prompt_typed_in_one_burst_after_slash_is_the_fields():
    async def body(app, pilot, client):
        assert app.model.busy                      # the loop's run is in flight
        client.sent.clear()
        theme, rows = app.theme, dict(app.session.rows)
        burst(app, ["/", *PROMPT, "enter"])
        await pilot.pause(0.5)
        assert not app.model.paused
        assert not any(isinstance(c, Stop) for c in client.sent)
        assert app.theme == theme and app.session.rows == rows and app.screen is app.screen_stack[0]
        assert app.model.settings.prompt == PROMPT
        assert not isinstance(app.focused, Input)  # Enter submitted and left the field

    run_app(body)


def test_slash_is_typed_in_a_field_and_acts_on_the_dashboard_only():
    async def body(app, pilot, client):
        await pilot.press("slash")
        await pilot.pause()
        field = app.query_one("#set-prompt", Input)
        assert app.focused is field
        await pilot.press("ctrl+u", *"1/2", "slash")
        await pilot.pause()
        assert field.value == "1/2/"               # / in the field is a character
        await pilot.press("escape", "question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        app.query_one("#tabs").active = "optimize"
        await pilot.press("slash")                 # not under the help screen
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert app.query_one("#tabs").active == "optimize"

    run_app(body)
