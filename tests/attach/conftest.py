"""Fixtures of the attach tests: the replay server, a process of its own (stdlib only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPLAY = Path(__file__).parent / "replay_server.py"


def start_replay() -> tuple[subprocess.Popen, str]:
    """A replay server on 127.0.0.1 and its base URL; it stops by itself after 10 minutes."""
    proc = subprocess.Popen([sys.executable, str(REPLAY), "600"], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the replay server did not start"
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def replay() -> Iterator[str]:
    proc, url = start_replay()
    yield url
    proc.kill()
    proc.wait()
