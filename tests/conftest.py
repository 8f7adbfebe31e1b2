"""Shared fixtures. The embedded model is converted once per machine (~20 s) and cached."""

from __future__ import annotations

import queue
import time
from typing import Any, Callable

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly where torch sees no CUDA device."""
    if not any("gpu" in item.keywords for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def wait_for(client: Any, predicate: Callable[[Any], bool], timeout: float = 120.0,
             seen: list | None = None) -> Any:
    """The first event from `client` that satisfies `predicate`; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no matching engine event within {timeout} s (seen: {seen[-5:] if seen else '?'})")
        try:
            ev = client.get(timeout=left)
        except queue.Empty:
            continue
        if seen is not None:
            seen.append(ev)
        if predicate(ev):
            return ev
