"""Helpers for the dashboard tests: screen text, waiting on the app."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from llmtop.engine.protocol import Status, Stop


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text lines."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot: Any, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Lets the app run until `condition()` is truthy; fails the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)


class Sent:
    """An engine client that records what the dashboard sends."""

    def __init__(self) -> None:
        self.sent: list = []
        self.pid = None

    def send(self, command) -> None:
        self.sent.append(command)
        if isinstance(command, Stop) and getattr(self, "on_event", None):
            self.on_event(Status("ready", "stopped"))   # as an engine answers a Stop

    def close(self) -> None:
        pass

    def alive(self) -> bool:
        return True
