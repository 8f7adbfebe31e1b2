"""`llmtop attach` against recorded real streams (TGI's native format, transformers serve's
OpenAI format) and against each fault, replayed by a local server (tests/attach/replay_server.py).

Each fault gives one line on stderr, exit code 2, and keeps what arrived (the table and the
--json record of the tokens before the fault)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtop import cli
from tests.attach.conftest import start_replay

DATA = Path(__file__).parent / "data"


def attach(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["attach", *argv, "--headless", "--timeout", "20"])
    out, err = capsys.readouterr()
    return code, out, err


def tgi_recording() -> list[dict]:
    return [json.loads(line[5:]) for line in (DATA / "tgi_generate_stream.sse").read_text().splitlines()
            if line.startswith("data:")]


def test_tgi_native_stream(replay: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_json = tmp_path / "tgi.json"
    code, out, err = attach(capsys, replay + "/tgi", "--json", str(out_json), "--max-new-tokens", "20")
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    events = tgi_recording()
    tokens = rec["tokens"][0]
    assert [t["id"] for t in tokens] == [e["token"]["id"] for e in events]
    assert "".join(t["text"] for t in tokens) == events[-1]["generated_text"]
    assert rec["endpoint"]["api"] == "tgi" and rec["endpoint"]["server"] == "tgi"
    assert rec["endpoint"]["token_counts"] == ["server"]     # one token per TGI event
    assert rec["model"]["name"] == "recorded-tgi-model"
    assert rec["config"]["opts"]["backend"] == "endpoint"
    m = rec["metrics"]
    assert m["n_tokens"] == 20 and len(m["itl_ms"]) == 19
    assert m["e2e_ms"] == pytest.approx(m["ttft_ms"] + m["tpot_ms"] * 19, rel=1e-9)
    readings = rec["endpoint"]["server_metrics"]          # TGI's gauges from /metrics
    assert readings and readings[0]["batch_size"] == 1 and readings[0]["waiting"] == 0
    assert "batch_size 1" in out


def test_openai_stream_and_goodput(replay: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_json = tmp_path / "oai.json"
    code, out, err = attach(capsys, replay + "/oai/v1", "--json", str(out_json), "--max-new-tokens", "8",
                            "--batch", "2", "--slo", "ttft=60000,tpot=0.001")
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    reply = json.loads((DATA / "transformers_serve_completions.json").read_text())
    for tokens in rec["tokens"]:
        assert "".join(t["text"] for t in tokens) == reply["choices"][0]["text"]
        assert len(tokens) == reply["usage"]["completion_tokens"]
    assert rec["endpoint"]["server"] == "transformers" and rec["endpoint"]["token_counts"] == ["usage"]
    s = rec["serving"]
    assert s["completed"] == 2 and s["total_output_tokens"] == 16
    assert s["good_requests"] == 0        # a 0.001 ms TPOT limit: no request is good
    assert len(rec["requests"]) == 2 and rec["metrics"]["batch"] == 2
    for r in rec["requests"]:
        assert r["e2e_ms"] == pytest.approx(r["ttft_ms"] + r["tpot_ms"] * (r["n_tokens"] - 1), rel=1e-9)
    assert len(rec["metrics"]["itl_ms"]) == 14   # vLLM pools the gaps of every request


def test_chat_stream(replay: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_json = tmp_path / "chat.json"
    code, out, err = attach(capsys, replay + "/oai", "--chat", "--json", str(out_json), "--max-new-tokens", "4")
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert "".join(t["text"] for t in rec["tokens"][0]) == "The largest continent is"
    assert rec["metrics"]["n_tokens"] == 4 == rec["endpoint"]["usage_tokens"][0]
    assert rec["metrics"]["prompt_tokens"] == 34


def test_multi_token_chunks_are_not_spread(replay: str, capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    """6 tokens in 3 text chunks, no per-chunk count: the figures are per chunk, and say so."""
    out_json = tmp_path / "multi.json"
    code, out, err = attach(capsys, replay + "/multi", "--json", str(out_json))
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert rec["endpoint"]["token_counts"] == ["per_chunk"]
    assert rec["endpoint"]["usage_tokens"] == [6] and rec["metrics"]["n_tokens"] == 3
    assert "figures are per chunk" in out


def test_remote_url_needs_allow_remote(capsys: pytest.CaptureFixture) -> None:
    code, out, err = attach(capsys, "http://192.0.2.1:8000")   # TEST-NET-1: never contacted
    assert code == 2 and "--allow-remote" in err and len(err.splitlines()) == 1


def test_api_key_from_env_is_never_written(replay: str, capsys: pytest.CaptureFixture,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = attach(capsys, replay + "/secure")
    assert code == 2 and "API key" in err
    monkeypatch.setenv("MY_KEY", "test-key")
    out_json = tmp_path / "key.json"
    code, out, err = attach(capsys, replay + "/secure", "--api-key-env", "MY_KEY", "--json", str(out_json))
    # the models list answered with the key; the stream path is not served under /secure
    assert code == 2 and "HTTP 404" in err
    assert "test-key" not in out + err


@pytest.mark.parametrize("where, expect, partial", [
    ("/nothing", "no OpenAI-compatible /v1/models nor TGI /info", False),
    ("/e400", "HTTP 400 from /v1/completions: max_tokens must be a positive integer", False),
    ("/e503", "HTTP 503 from /v1/completions: The server is overloaded", False),
    ("/json", "answered without a stream", False),
    ("/cut", "ended after 3 chunks without the server saying it was done", True),
])
def test_faults(replay: str, capsys: pytest.CaptureFixture, tmp_path: Path, where: str,
                expect: str, partial: bool) -> None:
    out_json = tmp_path / "fault.json"
    code, out, err = attach(capsys, replay + where, "--json", str(out_json))
    assert code == 2
    assert len(err.splitlines()) == 1 and expect in err and "Traceback" not in err
    assert out_json.exists() == partial
    if partial:   # what arrived before the fault is kept
        rec = json.loads(out_json.read_text())
        assert len(rec["tokens"][0]) == 3 and rec["stopped"] == "error"


def test_unreachable(capsys: pytest.CaptureFixture) -> None:
    proc, url = start_replay()
    proc.kill()
    proc.wait()     # the port is free again: nothing listens there
    code, out, err = attach(capsys, url)
    assert code == 2 and "cannot connect" in err and len(err.splitlines()) == 1


def test_server_dies_mid_stream(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    proc, url = start_replay()
    try:
        out_json = tmp_path / "dies.json"
        code, out, err = attach(capsys, url + "/dies", "--json", str(out_json))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1          # it exited by itself, mid-stream
    assert code == 2 and "closed the connection after 3 chunks" in err and len(err.splitlines()) == 1
    rec = json.loads(out_json.read_text())
    assert len(rec["tokens"][0]) == 3 and rec["endpoint"]["errors"][0]["kind"] == "died"


def test_tgi_has_no_ignore_eos(replay: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = attach(capsys, replay + "/tgi", "--ignore-eos")
    assert code == 2 and "no ignore_eos" in err and len(err.splitlines()) == 1


def test_ctrl_c_keeps_what_arrived(replay: str, tmp_path: Path) -> None:
    """SIGINT mid-stream: the table and the record of the tokens so far, exit code 130."""
    import signal
    import subprocess
    import sys

    out_json = tmp_path / "stop.json"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("llmtop")), "attach", replay + "/slow",
                             "--headless", "--json", str(out_json)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.read(len("The largest continent is Antarctica")).endswith("Antarctica")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and len(err.splitlines()) == 1
    rec = json.loads(out_json.read_text())
    assert 1 <= len(rec["tokens"][0]) < 8 and rec["endpoint"]["errors"][0]["kind"] == "stopped"
    assert rec["stopped"] == "stop"


def test_compare_reads_attach_records(replay: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert attach(capsys, replay + "/oai", "--json", str(a))[0] == 0
    assert attach(capsys, replay + "/tgi", "--json", str(b))[0] == 0
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "backend=endpoint" in out and "model.server: transformers -> tgi" in out
