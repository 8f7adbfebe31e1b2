"""Session record and replay: one JSON object a line, flushed as it goes.

The dashboard records what it sees (engine events with their stamps, configuration changes,
telemetry samples) so that `llmtop replay FILE` can play it back, at real or faster speed, on a
machine with no GPU. Pure Python: no torch, no Textual.

File format (schema `llmtop.session/1`):

    line 1   {"type": "Session", "schema": "llmtop.session/1", "at_ns": ..., "unix": ..., ...}
    line 2+  {"type": <protocol event name or Config / Telemetry / Note>, "at_ns": ..., ...}

`at_ns` is `time.perf_counter_ns()` when the line was written (the engine's token stamps use
the same system-wide clock on Linux), and replay paces itself on it. Protocol events keep the
fields `llmtop.engine.protocol.encode` gives them (with "type" and "v"), so `to_message` turns a line
back into the dataclass the live dashboard handles.

Reading stops at the first damaged line (a truncated last line after a crash, garbage, a line
that is not an event) and says where, in one line; everything before it is kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator

SCHEMA = "llmtop.session/1"
HEADER = "Session"
# types a session adds to the protocol's events
CONFIG, TELEMETRY, NOTE = "Config", "Telemetry", "Note"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


class SessionWriter:
    """Appends events to a session file; each line is flushed to the OS as it is written.

    `SessionWriter(path).write({"type": ..., ...})` is all the dashboard needs; `event`,
    `config` and `telemetry` are conveniences for protocol messages, Configure commands and
    profiler ticks. `fsync=True` also forces every line to disk (slower; survives power loss).
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any] | None = None,
                 fsync: bool = False) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self._fsync = fsync
        self.lines = 0
        try:
            from llmtop import __version__ as version
        except ImportError:  # pragma: no cover
            version = ""
        header = {"type": HEADER, "schema": SCHEMA, "llmtop": version, "unix": time.time(),
                  "pid": os.getpid()}
        header.update(meta or {})
        self.write(header)

    def write(self, event: dict[str, Any]) -> None:
        """Writes one event (a dict with a "type"); adds `at_ns` when it has none."""
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ValueError("a session event is a dict with a string 'type'")
        if "at_ns" not in event:
            event = {**event, "at_ns": time.perf_counter_ns()}
        line = json.dumps(event, default=_jsonable, separators=(",", ":"))
        self._f.write(line + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self.lines += 1

    def event(self, message: Any) -> None:
        """A protocol message (llmtop.engine.protocol dataclass), encoded as the pipe encodes it."""
        from llmtop.engine.protocol import encode

        self.write(encode(message))

    def config(self, configure: Any, how: str = "") -> None:
        """A configuration change: a Configure command (or its dict) and how it was applied."""
        data = _jsonable(configure) if not isinstance(configure, dict) else configure
        self.write({"type": CONFIG, "config": data, "how": how})

    def telemetry(self, tick: Any) -> None:
        """A profiler tick (llmtop.profilers.sampler.Tick) or any dict of samples."""
        data = _jsonable(tick) if not isinstance(tick, dict) else dict(tick)
        data.pop("type", None)
        self.write({"type": TELEMETRY, **data})

    def note(self, text: str) -> None:
        self.write({"type": NOTE, "text": text})

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SessionDamage(ValueError):
    """Where and why reading stopped; str() is the one-line message."""

    def __init__(self, path: str, line: int, why: str, kept: int) -> None:
        self.path, self.line, self.why, self.kept = path, line, why, kept
        where = f"line {line}" if line else "the file"
        super().__init__(f"{path}: {where} {why}; stopped there, {kept} events before it are kept")


def iter_session(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, event) for every good line, the header included; raises SessionDamage at
    the first bad one (after yielding everything before it)."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SessionDamage(path, 0, f"cannot be read ({e.strerror or e})", 0) from None
    kept = 0
    last_ns = None
    with f:
        lineno = 0
        for lineno, raw in enumerate(f, 1):
            truncated = not raw.endswith(b"\n")
            why = None
            event = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                why = f"is not UTF-8 text (byte {e.start})"
            else:
                if not text.strip():
                    why = "is empty"
                else:
                    try:
                        event = json.loads(text)
                    except ValueError as e:
                        why = "is cut short (the file ends mid-line)" if truncated else \
                            f"is not JSON ({e.msg} at column {e.colno})"
            if why is None:
                why = _check(event, lineno, last_ns)
            if why is not None:
                raise SessionDamage(path, lineno, why, kept)
            last_ns = event["at_ns"]
            kept += 1
            yield lineno, event
        if lineno == 0:
            raise SessionDamage(path, 0, "is empty: not an llmtop session", 0)


def _check(event: Any, lineno: int, last_ns: int | None) -> str | None:
    if not isinstance(event, dict):
        return f"holds a JSON {type(event).__name__}, not an event"
    if lineno == 1:
        if event.get("type") != HEADER or not str(event.get("schema", "")).startswith("llmtop.session/"):
            return "is not an llmtop session header (was the file recorded by llmtop?)"
        if event.get("schema") != SCHEMA:
            return f"has schema {event.get('schema')!r}; this llmtop reads {SCHEMA}"
    if not isinstance(event.get("type"), str):
        return "is an event without a 'type'"
    stamp = event.get("at_ns")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        return "is an event without an integer 'at_ns' stamp"
    return None


def read_session(path: str | os.PathLike) -> tuple[list[dict[str, Any]], str | None]:
    """Every event up to the first damage (header excluded), and the one-line problem or None."""
    events: list[dict[str, Any]] = []
    try:
        for lineno, event in iter_session(path):
            if lineno > 1:
                events.append(event)
    except SessionDamage as e:
        # the header does not count as an event in the message
        e.kept = len(events)
        return events, SessionDamage(e.path, e.line, e.why, len(events)).args[0]
    return events, None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The session's header line; raises SessionDamage when there is no valid one."""
    for _, event in iter_session(path):
        return event
    raise SessionDamage(os.fspath(path), 0, "is empty: not an llmtop session", 0)


def replay_events(path: str | os.PathLike, speed: float = 1.0
                  ) -> Iterator[tuple[float, dict[str, Any]]]:
    """(delay_s, event) pairs: wait delay_s, then show the event. Lazy: a long file plays
    while it is read. speed 2 plays twice as fast; speed 0 (or less) gives no delays at all.

    At damage a last pair (0.0, {"type": "ReplayStopped", "line": N, "message": ...}) tells the
    consumer where and why it stopped; a clean file ends with
    (0.0, {"type": "ReplayEnd", "events": n}).
    """
    last = None
    n = 0
    try:
        for lineno, event in iter_session(path):
            if lineno == 1:
                last = event["at_ns"]
                continue
            stamp = event["at_ns"]
            delay = 0.0
            if speed > 0 and last is not None:
                delay = max(0, stamp - last) / 1e9 / speed
            last = stamp
            n += 1
            yield delay, event
    except SessionDamage as e:
        message = SessionDamage(e.path, e.line, e.why, n).args[0]
        yield 0.0, {"type": "ReplayStopped", "line": e.line, "message": message, "events": n}
        return
    yield 0.0, {"type": "ReplayEnd", "events": n}


class ReplaySource:
    """What the dashboard gets for `llmtop replay FILE`: the file, the speed, the header, and
    `events()`, the (delay_s, event) pairs of `replay_events` (see there for the last pair)."""

    def __init__(self, path: str | os.PathLike, speed: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.speed = speed
        self.header = read_header(path)   # raises SessionDamage for a file that is no session

    def events(self) -> Iterator[tuple[float, dict[str, Any]]]:
        return replay_events(self.path, self.speed)

    def messages(self) -> Iterator[tuple[float, Any]]:
        """Like events(), with protocol events turned back into their dataclasses."""
        for delay, event in self.events():
            yield delay, to_message(event)


def to_message(event: dict[str, Any]) -> Any:
    """A recorded line as the live object: the protocol dataclass for engine events, the
    dict itself for the session's own types (Config, Telemetry, Note, Replay*)."""
    if "v" not in event:
        return event
    from llmtop.engine.protocol import decode

    data = {k: v for k, v in event.items() if k != "at_ns"}
    try:
        return decode(data)
    except (ValueError, TypeError):
        return event
