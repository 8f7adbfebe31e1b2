"""`llmtop attach URL` as a dashboard: a real pilot (App.run_test) attached to a real
`transformers serve` on the embedded model (conftest.py's `server`), and the command's one-line
failure on a server that is not there."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmtop import attach
from llmtop.engine.endpoint.client import FIXED, EndpointClient
from llmtop.engine.protocol import Configure, Generate
from llmtop.tui.analysis import num
from llmtop.tui.app import LlmtopApp
from tests.attach.conftest import start_replay

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


def _app(client: EndpointClient) -> LlmtopApp:
    return LlmtopApp(Configure(model=client.server.model, device="endpoint", dtype="",
                               opts={"backend": "endpoint"}),
                     Generate(prompt=PROMPT, max_new_tokens=20), client=client, telemetry=False,
                     chat=False)


def test_dashboard_shows_the_servers_metrics(replay: str) -> None:
    """TGI's recorded stream and its /metrics gauges (replayed): the server panel shows them."""
    client = EndpointClient(attach.connect(replay + "/tgi"), timeout_s=20)
    client.start()

    async def body() -> None:
        app = _app(client)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: any(r.record for r in app.session.runs), 30, "a run")
            await pilot.press("space")
            await wait_for(pilot, lambda: not app.model.busy, 30, "the loop to idle")
            app.redraw_all()
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "tgi server, tgi API" in text
            assert app.session.server_metrics, "no /metrics reading arrived"
            assert "waiting requests" in text and "batch size" in text
            run = [r for r in app.session.runs if r.record][-1]
            assert run.ids and len(run.ids) == len(run.texts) == run.record["metrics"]["n_tokens"]

    try:
        run_async(body())
    finally:
        client.close()


def test_dashboard_keeps_the_tokens_of_a_server_that_dies() -> None:
    """The server process exits mid-stream: one line, the loop pauses, the tokens stay."""
    proc, url = start_replay()
    client = EndpointClient(attach.connect(url + "/dies"), timeout_s=20)
    client.start()

    async def body() -> None:
        app = _app(client)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: app.model.paused, 30, "the fault to pause the loop")
            await pilot.pause(0.3)
            (run,) = list(app.session.runs)
            assert run.texts and run.record is not None and run.record["stopped"] == "error"
            notes = [n.message for n in app._notifications]
            fault = [n for n in notes if n.startswith("runtime: the server closed the connection")]
            assert len(fault) == 1 and "\n" not in fault[0], notes
            assert not app.session.rows   # a cut run is not a configuration's figure

    try:
        run_async(body())
    finally:
        client.close()
        proc.kill()
        proc.wait()


def test_dashboard_stop_cancels_the_stream(replay: str) -> None:
    """s during a slow stream (one event a second): the stream is cancelled at once and the
    tokens so far make a record (stopped: stop), the loop pauses."""
    client = EndpointClient(attach.connect(replay + "/slow"), timeout_s=20)
    client.start()

    async def body() -> None:
        app = _app(client)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: any(r.stamps for r in app.session.runs), 30, "a token")
            await pilot.press("s")
            await wait_for(pilot, lambda: any(r.record for r in app.session.runs), 3,
                           "the stopped run's record")
            (run,) = list(app.session.runs)
            assert run.record["stopped"] == "stop" and 1 <= len(run.stamps) < 5
            await wait_for(pilot, lambda: not app.model.busy, 3, "ready after the stop")
            assert app.model.paused

    try:
        run_async(body())
    finally:
        client.close()


def test_quit_while_the_loop_runs_is_prompt(replay: str) -> None:
    """q while runs follow each other (the replayed stream takes ~0.2 s): the dashboard hands
    the client back idle at once, whether a stream is in flight or the last one just ended."""
    client = EndpointClient(attach.connect(replay + "/tgi"), timeout_s=20)
    client.start()
    took: list[float] = []

    async def body() -> None:
        app = _app(client)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: sum(1 for r in app.session.runs if r.record) >= 3, 30,
                           "three runs")
            await pilot.press("q")
            took.append(time.monotonic())
        took[-1] = time.monotonic() - took[-1]

    try:
        for _ in range(2):   # the same client, handed back idle, adopted again
            run_async(body())
    finally:
        client.close()
    assert max(took) < 5, took
    assert not client.alive()


def test_reconnect_after_the_server_went_away() -> None:
    """The server stops between runs: ctrl+r (the footer's Reconnect: there is no engine here
    to restart) says in one line that the server cannot be reached and what to do, keeping the
    runs measured; with the server back on its port, ctrl+r again attaches and runs go on."""
    proc, url = start_replay()
    port = int(url.rsplit(":", 1)[1])
    client = EndpointClient(attach.connect(url + "/tgi"), timeout_s=20)
    client.start()

    def done() -> int:
        return sum(1 for r in app.session.runs if r.record)

    async def body() -> None:
        nonlocal proc, app
        app = _app(client)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: done() >= 1, 30, "a run")
            footer = screen_text(app).splitlines()[-1]
            assert "Reconnect" in footer and "Restart engine" not in footer, footer
            await pilot.press("space")   # the loop pauses once its run ends
            await wait_for(pilot, lambda: not app.model.busy, 10, "the run in flight to end")
            measured = done()
            proc.kill()
            proc.wait()
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.model.error, 30, "the unreachable server's line")
            error = app.model.error
            assert "Press ctrl+r to reconnect" in error and "\n" not in error, error
            assert "cannot load" not in error and "restart the engine" not in error, error
            assert done() == measured
            proc, _ = start_replay(port)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.model.engine_up and not app.model.busy, 30,
                           "attached again")
            assert not app.model.error
            await pilot.press("space")
            await wait_for(pilot, lambda: done() >= measured + 2, 30, "runs after reconnecting")

    app = None
    try:
        run_async(body())
    finally:
        client.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("chat", [False, True])
def test_batch_of_two_and_chat_in_the_attached_dashboard(replay: str, chat: bool) -> None:
    """--batch 2 sends two concurrent streamed requests per run and --chat the chat API: each
    run's record says so, its tokens stream, and the comparison row is the batch's."""
    client = EndpointClient(attach.connect(replay + "/oai"), timeout_s=20)
    client.start()

    async def body() -> None:
        app = LlmtopApp(Configure(model=client.server.model, device="endpoint", dtype="",
                                  opts={"backend": "endpoint"}),
                        Generate(prompt=PROMPT, max_new_tokens=20, batch=2), client=client,
                        telemetry=False, chat=chat)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: sum(1 for r in app.session.runs if r.record) >= 2, 30,
                           "two runs")
            await pilot.press("space")
            await wait_for(pilot, lambda: not app.model.busy, 10, "the loop to idle")
            run = [r for r in app.session.runs if r.record][-1]
            assert run.record["request"]["batch"] == 2 and run.texts
            assert len(run.record["requests"]) == 2 and run.record["serving"]["completed"] == 2
            assert run.record["request"]["chat"] == chat
            (row,) = app.session.rows.values()
            assert row.batch == 2 and row.count >= 2
            assert not app.model.error and "Error" not in screen_text(app)

    try:
        run_async(body())
    finally:
        client.close()
