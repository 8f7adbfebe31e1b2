"""The engine's CPU thread count: the plan (pure), the real engine beside a dashboard, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmtop.engine import threads
from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import Configure, DeviceInfo, Error, Generate, GuardResult, RunDone

from ..conftest import wait_for


@pytest.mark.parametrize("default, usable, ui, want", [
    (2, 2, True, 1),     # the dev VM: a dashboard gets one of the two cores
    (2, 2, False, 2),    # headless: torch's default, as fast as before
    (16, 16, True, 15),  # a big box: one core for the UI, the rest for the engine
    (8, 16, True, 8),    # torch took physical cores only: the UI has room already
    (1, 1, True, 1),     # one core: nothing to keep, the engine still runs
    (4, 2, True, 1),     # OMP_NUM_THREADS above the affinity mask: capped to it, less one
])
def test_plan_keeps_a_core_for_the_ui_only_when_torch_would_take_all(default, usable, ui, want):
    p = threads.plan(None, default, usable, ui)
    assert p.threads == want
    assert bool(p.reason) == (want != default)
    if p.reason:   # how many cores were kept, and the way back
        assert p.reason.startswith(f"{usable - want} of {usable} cores kept for the dashboard")
        assert f"--engine-threads {default}" in p.reason


def test_explicit_count_wins_and_bad_values_are_refused(monkeypatch):
    assert threads.plan(3, 2, 2, True).threads == 3
    assert threads.parse("auto") is None and threads.parse(None) is None and threads.parse("4") == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(threads.ThreadsError):
            threads.parse(bad)
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.parse(threads.requested(None)) == 3 and threads.parse(threads.requested("2")) == 2


def _configured(client: EngineClient) -> DeviceInfo:
    client.start()
    client.send(Configure(model="embedded", device="cpu", dtype="bf16"))
    seen: list = []
    wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), timeout=300, seen=seen)
    info = [e for e in seen if isinstance(e, DeviceInfo)]
    assert info, seen[-3:]
    return info[-1]


def test_real_engine_beside_a_dashboard_reports_and_records_its_threads():
    import torch

    expected = threads.plan(None, torch.get_num_threads(), threads.usable_cpus(), True)
    client = EngineClient(ui_attached=True)
    try:
        info = _configured(client)
        assert (info.threads, info.cpus, info.threads_note) == (expected.threads, expected.usable,
                                                                expected.reason)
        client.send(Generate(run_id=1, prompt="The largest continent is", max_new_tokens=3))
        done = wait_for(client, lambda e: isinstance(e, RunDone), timeout=120)
        assert done.record["machine"]["engine_threads"] == expected.threads
    finally:
        client.close()
    client = EngineClient(threads=1, ui_attached=True)
    try:
        info = _configured(client)
        assert info.threads == 1 and info.threads_note.startswith("set by --engine-threads")
    finally:
        client.close()


def test_cli_refuses_a_bad_thread_count_with_exit_2():
    for args, env in ((["--engine-threads", "0"], {}), ([], {threads.ENV: "many"})):
        p = subprocess.run([sys.executable, "-m", "llmtop", "run", "--headless", *args],
                           capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("llmtop: engine threads must be") and "Traceback" not in p.stderr
