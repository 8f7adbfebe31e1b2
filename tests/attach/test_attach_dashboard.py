"""`llmtop attach URL` as a dashboard: a real pilot (App.run_test) attached to a real
`transformers serve` on the embedded model (conftest.py's `server`), and the command's one-line
failure on a server that is not there."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from llmtop import attach
from llmtop.engine.endpoint.client import FIXED, EndpointClient
from llmtop.engine.protocol import Configure, Generate
from llmtop.tui.analysis import num
from llmtop.tui.app import LlmtopApp

from ..tui.helpers import run_async, screen_text, wait_for

PROMPT = "The largest continent is"   # then the dashboard loops over tui/requests.py PROMPT_SET
TOKENS = 5
RUN_TIMEOUT = 150


@pytest.mark.slow   # the server's start (shared with test_transformers_serve.py) and CPU runs
def test_dashboard_attached_to_transformers_serve(server: tuple[str, str]) -> None:
    url, model = server
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    srv = attach.connect(url)
    client = EndpointClient(srv)
    client.start()

    async def body() -> None:
        app = LlmtopApp(Configure(model=srv.model, device="endpoint", dtype="",
                                  opts={"backend": "endpoint"}),
                        Generate(prompt=PROMPT, max_new_tokens=TOKENS), client=client,
                        telemetry=False, chat=False)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: any(r.stamps for r in app.session.runs), RUN_TIMEOUT,
                           "the first streamed token")
            await wait_for(pilot, lambda: any(r.record for r in app.session.runs), RUN_TIMEOUT,
                           "a finished run")
            await pilot.press("space")   # pause: the run in flight ends, no new one starts
            await wait_for(pilot, lambda: not app.model.busy, RUN_TIMEOUT, "the loop to idle")
            app.redraw_all()
            await pilot.pause(0.3)
            run = [r for r in app.session.runs if r.record][-1]   # the one the metrics show
            text = screen_text(app)
            assert f"ATTACHED {srv.url}" in text
            tpot = run.record["metrics"]["tpot_ms"]
            assert run.record["metrics"]["n_tokens"] == TOKENS and tpot > 0
            assert f"{num(tpot, 2)} ms" in text, "the metrics panel does not show the run's TPOT"
            reply = httpx.post(url + "/v1/completions", timeout=300, json={
                "model": model, "prompt": run.prompt, "max_tokens": TOKENS, "temperature": 0.0}).json()
            assert "".join(run.texts) == reply["choices"][0]["text"] and run.texts
            assert run.record["endpoint"]["server"] == "transformers"
            # the server's options are its own: shown, unavailable, with the reason
            assert "read-only: the server's configuration" in text
            assert FIXED in text and "transformers server, openai API" in text
            assert not app.select_option("attention", "eager")
            assert not app.select_tp(2)
            # the comparison has the attach run's row, with its TPOT
            (row,) = app.session.rows.values()
            assert row.label == "backend=endpoint" and row.count >= 1
            assert "backend=endpoint" in text
            await pilot.press("q")

    try:
        run_async(body())
    finally:
        client.close()
    assert not client.alive()
    assert not [t for t in threading.enumerate() if t.name == "endpoint-client"]
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children


def test_attach_dashboard_unreachable_is_one_line() -> None:
    run = subprocess.run([str(Path(sys.executable).with_name("llmtop")), "attach",
                          "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""   # nothing drawn
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtop: cannot connect to http://127.0.0.1:9")
