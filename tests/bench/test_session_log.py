"""Session record and replay: a real engine session recorded as it goes, read back, replayed;
a truncated or corrupt file gives its events up to the damage and says where it stopped."""

from __future__ import annotations

import json
import time

import pytest

from llmtop.engine.protocol import ConfigApplied, Configure, Generate, RunDone, Token
from llmtop.engine.session_log import SessionWriter, read_session, replay_events, to_message

from .conftest import llmtop

NEW = 6


@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    """What the dashboard does: every engine event, the configuration, telemetry, to a file."""
    from llmtop.engine.client import EngineClient

    path = tmp_path_factory.mktemp("session") / "s.jsonl"
    writer = SessionWriter(path, meta={"source": "test"})
    client = EngineClient()
    client.start()
    try:
        cfg = Configure(model="synthetic:tiny", device="cpu")
        client.send(cfg)
        writer.config(cfg)
        deadline = time.monotonic() + 120
        while True:
            ev = client.get(timeout=max(0.1, deadline - time.monotonic()))
            writer.event(ev)
            if isinstance(ev, ConfigApplied):
                break
        writer.telemetry({"t_ns": time.perf_counter_ns(), "gpus": [], "host": {"cpu_pct": 12.5}})
        client.send(Generate(run_id=7, prompt_len=16, max_new_tokens=NEW, ignore_eos=True))
        while True:
            ev = client.get(timeout=max(0.1, deadline - time.monotonic()))
            writer.event(ev)
            if isinstance(ev, RunDone):
                break
    finally:
        client.close()
        writer.close()
    return path


def test_written_lines_are_flushed_as_they_go(tmp_path):
    path = tmp_path / "live.jsonl"
    w = SessionWriter(path)
    w.write({"type": "Note", "text": "one"})
    lines = path.read_text().splitlines()          # readable before close: flushed per line
    assert len(lines) == 2 and json.loads(lines[1])["text"] == "one"
    assert json.loads(lines[0])["schema"] == "llmtop.session/1"
    with pytest.raises(ValueError):
        w.write({"no": "type"})
    w.close()


def test_recorded_session_reads_back_in_order(session_file):
    events, problem = read_session(session_file)
    assert problem is None
    kinds = [e["type"] for e in events]
    assert kinds[0] == "Config" and "ConfigApplied" in kinds and "Telemetry" in kinds
    assert kinds.count("Token") == NEW and kinds[-1] == "RunDone"
    assert [e["at_ns"] for e in events] == sorted(e["at_ns"] for e in events)
    tokens = [to_message(e) for e in events if e["type"] == "Token"]
    assert all(isinstance(t, Token) and t.run_id == 7 for t in tokens)
    done = to_message(events[-1])
    assert isinstance(done, RunDone)
    # the record inside the session holds the same stamps as the Token events
    assert [t["t_ns"] for t in done.record["tokens"][0]] == [t.t_ns for t in tokens]


def test_replay_paces_by_the_recorded_stamps(session_file):
    events, _ = read_session(session_file)
    pairs = list(replay_events(session_file, speed=4.0))
    assert pairs[-1] == (0.0, {"type": "ReplayEnd", "events": len(events)})
    body = pairs[:-1]
    assert [e for _, e in body] == events
    span = (events[-1]["at_ns"] - json.loads(session_file.read_text().splitlines()[0])["at_ns"]) / 1e9
    assert abs(sum(d for d, _ in body) - span / 4.0) < 1e-6
    assert all(d == 0.0 for d, _ in replay_events(session_file, speed=0))


def _damage(src, dst, how):
    lines = src.read_bytes().splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if b'"type":"Token"' in ln) + 3   # 0-based line index
    if how == "truncate":
        data = b"".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2]
    else:
        data = b"".join(lines[:cut]) + b"\x00\xff garbage }\n" + b"".join(lines[cut + 1:])
    dst.write_bytes(data)
    return cut + 1, cut - 1     # the damaged line's number, and the events before it (header excluded)


@pytest.mark.parametrize("how, words", [("truncate", "is cut short (the file ends mid-line)"),
                                        ("corrupt", "is not UTF-8 text (byte 1)")])
def test_damaged_session_keeps_events_up_to_the_damage(session_file, tmp_path, how, words):
    path = tmp_path / f"{how}.jsonl"
    line, kept = _damage(session_file, path, how)
    events, problem = read_session(path)
    good, _ = read_session(session_file)
    assert events == good[:kept]
    assert problem == f"{path}: line {line} {words}; stopped there, {kept} events before it are kept"
    pairs = list(replay_events(path, speed=0))
    assert [e for _, e in pairs[:-1]] == good[:kept]
    assert pairs[-1][1]["type"] == "ReplayStopped" and pairs[-1][1]["line"] == line


def test_not_a_session_and_bad_json_lines(tmp_path):
    run = tmp_path / "run.json"
    run.write_text('{"schema": "llmtop.run/1"}\n')
    events, problem = read_session(run)
    assert events == [] and "line 1 is not an llmtop session header" in problem
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "is empty: not an llmtop session" in read_session(empty)[1]
    assert "cannot be read" in read_session(tmp_path / "missing.jsonl")[1]
    p = tmp_path / "p.jsonl"
    w = SessionWriter(p)
    w.note("a")
    w.close()
    with open(p, "a") as f:
        f.write('{"type": "Note", "text": "no stamp"}\n')
    events, problem = read_session(p)
    assert len(events) == 1 and "line 3 is an event without an integer 'at_ns' stamp" in problem


def test_replay_command_plays_up_to_the_damage(session_file, tmp_path):
    path = tmp_path / "cut.jsonl"
    line, kept = _damage(session_file, path, "truncate")
    p = llmtop("replay", str(path), "--headless", "--speed", "0")
    assert p.returncode == 1
    assert "[config] synthetic:tiny" in p.stdout
    assert p.stderr.strip() == f"llmtop: {path}: line {line} is cut short (the file ends mid-line); " \
                               f"stopped there, {kept} events before it are kept"
    full = llmtop("replay", str(session_file), "--headless", "--speed", "0")
    assert full.returncode == 0, full.stderr
    assert "TTFT" in full.stdout and "end of session" in full.stdout
    bad = llmtop("replay", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and "no such file: " in bad.stderr and "0 events" not in bad.stderr and "Traceback" not in bad.stderr
