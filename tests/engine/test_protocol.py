"""The typed protocol: nested dataclasses and enums decode as themselves, errors know whether
they end a run, and a session recorded by an older llmtop (protocol 1, config as a dict, no
duration or KV figure) still decodes and replays."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmtop.engine import protocol
from llmtop.engine.protocol import (ConfigApplied, Configure, EngineEvent, Error, ErrorKind,
                                    ModelInfo, decode, encode)
from llmtop.engine.session_log import to_message

# lines as llmtop wrote them before the protocol was typed (copied from a recorded session)
OLD_LINES = [
    {"type": "Session", "schema": "llmtop.session/1", "llmtop": "0.1.0", "unix": 1.0, "pid": 1,
     "at_ns": 1000},
    {"type": "ModelInfo", "v": 1, "name": "synthetic:tiny", "params": 100, "weight_bytes": 200,
     "layers": 2, "heads": 4, "kv_heads": 2, "hidden": 64, "vocab": 512, "dtype": "bf16",
     "device": "cpu", "synthetic": True, "source": "tiny", "at_ns": 2000},
    {"type": "ConfigApplied", "v": 1, "config": {"model": "synthetic:tiny", "device": "cpu",
     "dtype": "bf16", "opts": {"attention": "sdpa", "kv": "dynamic"}, "tp": 1}, "how": "loaded",
     "seconds": 0.5, "at_ns": 3000},
    {"type": "EngineEvent", "v": 1, "kind": "recompile", "detail": "decode graph", "t_ns": 3500,
     "at_ns": 3600},
    {"type": "Error", "v": 1, "kind": "oom", "message": "out of device memory",
     "recoverable": True, "at_ns": 4000},
]


def test_config_applied_carries_a_configure_and_round_trips():
    cfg = Configure("synthetic:tiny", "cpu", "bf16", {"attention": "flash"}, 2, [0, 1])
    wire = encode(ConfigApplied(cfg, "loaded", 1.5))
    assert wire["config"] == {"model": "synthetic:tiny", "device": "cpu", "dtype": "bf16",
                              "opts": {"attention": "flash"}, "tp": 2, "gpus": [0, 1]}
    back = decode(json.loads(json.dumps(wire)))
    assert isinstance(back.config, Configure) and back.config == cfg
    assert back.config.tp == 2 and back.config.opts["attention"] == "flash"


def test_error_kind_is_an_enum_that_compares_to_its_wire_string():
    wire = encode(Error(ErrorKind.OOM, "out of memory"))
    assert wire["kind"] == "oom" and type(wire["kind"]) is str   # builtins on the wire
    back = decode(wire)
    assert back.kind is ErrorKind.OOM and back.kind == "oom" and f"{back.kind}" == "oom"
    with pytest.raises(ValueError):
        decode({**wire, "kind": "no_such_kind"})


def test_fatal_and_pausing_kinds():
    fatal = {k.value for k in ErrorKind if k.fatal}
    assert fatal == {"config", "bad_request", "engine_dead", "internal", "protocol",
                     "not_configured", "stalled"}   # oom / runtime still send a record
    pausing = {k.value for k in ErrorKind if k.pausing}
    assert pausing == {"oom", "runtime", "bad_request", "internal"}


def test_a_recorded_session_of_the_old_format_still_decodes():
    model, applied, event, error = (to_message(line) for line in OLD_LINES[1:])
    assert isinstance(model, ModelInfo) and model.kv_bytes_per_token == 0   # not recorded then
    assert isinstance(applied, ConfigApplied) and applied.config.gpus is None
    assert applied.config.opts == {"attention": "sdpa", "kv": "dynamic"}
    assert isinstance(event, EngineEvent) and event.duration_ms is None
    assert isinstance(error, Error) and error.kind is ErrorKind.OOM
    assert protocol.PROTOCOL_VERSION == 1   # the wire did not change: no bump, old files read


def test_replay_plays_an_old_format_session(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in OLD_LINES))
    p = subprocess.run([sys.executable, "-m", "llmtop", "replay", str(path), "--headless",
                        "--speed", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "[error] oom: out of device memory" in p.stdout
    assert "end of session: 4 events" in p.stdout
