from __future__ import annotations

import pytest

from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import Configure, Error, GuardResult

from ..conftest import wait_for


@pytest.fixture(scope="module")
def engine():
    """One real engine process on the embedded model for a test module (start costs ~5 s)."""
    client = EngineClient()
    client.start()
    client.send(Configure(model="embedded", device="cpu", dtype="bf16"))
    ev = wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), timeout=300)
    assert isinstance(ev, GuardResult), ev
    yield client
    client.close()


@pytest.fixture
def engine_factory():
    """Fresh configured engines for tests that kill or reconfigure them; all closed after."""
    clients: list[EngineClient] = []

    def make(configure: Configure | None = None) -> EngineClient:
        client = EngineClient()
        client.start()
        clients.append(client)
        client.send(configure or Configure(model="embedded", device="cpu", dtype="bf16"))
        ev = wait_for(client, lambda e: isinstance(e, (GuardResult, Error)), timeout=300)
        assert isinstance(ev, GuardResult), ev  # the configuration is complete
        return client

    yield make
    for client in clients:
        client.close()
