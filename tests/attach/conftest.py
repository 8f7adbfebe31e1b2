"""Fixtures of the attach tests: the replay server (a process of its own, stdlib only) and a
real `transformers serve` on the embedded model (one per test session: it costs CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPLAY = Path(__file__).parent / "replay_server.py"
START_TIMEOUT_S = 240


def start_replay(port: int = 0) -> tuple[subprocess.Popen, str]:
    """A replay server on 127.0.0.1 (on `port`, else a free one) and its base URL; it stops by
    itself after 10 minutes."""
    proc = subprocess.Popen([sys.executable, str(REPLAY), "600", str(port)],
                            stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the replay server did not start"
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def replay() -> Iterator[str]:
    proc, url = start_replay()
    yield url
    proc.kill()
    proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server() -> Iterator[tuple[str, str]]:
    """(base URL, model name) of a `transformers serve` pinned to the embedded model."""
    from llmtop.engine import models

    folder = str(models.convert_embedded(lambda *a: None))
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llmtop-transformers-serve-{port}.log", "w")
    proc = subprocess.Popen([str(exe), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert proc.poll() is None, f"transformers serve exited ({proc.returncode}); see {log.name}"
            assert time.monotonic() < deadline, f"transformers serve did not start; see {log.name}"
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
