"""Fixtures for the dashboard tests.

The real-engine tests share one engine per module (`engine_client`): starting one costs ~5-20 s
on a small CPU, and each app adopts it instead of spawning its own.
"""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="module")
def engine_client():
    """A real engine on the embedded model, shared by a module's tests; closed at the end."""
    from llmtop.engine.client import EngineClient
    from llmtop.engine.protocol import Error, Status

    client = EngineClient()
    client.start()
    deadline = time.monotonic() + 180
    while True:  # until the engine process has imported torch and says ready
        ev = client.get(timeout=max(1.0, deadline - time.monotonic()))
        if isinstance(ev, Error):
            client.close()
            pytest.fail(f"engine failed to start: {ev.message}")
        if isinstance(ev, Status) and ev.phase == "ready":
            break
    yield client
    client.close()
