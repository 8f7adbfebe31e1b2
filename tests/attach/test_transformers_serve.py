"""`llmtop attach` against a real `transformers serve` on 127.0.0.1, serving the embedded
SmolLM2-135M-Instruct on the CPU (the `server` fixture of conftest.py), end to end.

Checks the issue's acceptance: the streamed text equals the server's own non-streamed answer to
the same greedy request, the token count equals the server's usage count, latency = TTFT + TPOT
x (n - 1), and bench points with 1, 2 and 4 concurrent requests make a sweep report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmtop import attach, bench_report
from llmtop.engine.endpoint.stream import Request

pytestmark = pytest.mark.slow   # the server's start and a few CPU generations: ~1 minute
PROMPT = "The largest continent is"


def test_attach_headless_matches_the_server(server: tuple[str, str], tmp_path: Path) -> None:
    url, model = server
    out_json = tmp_path / "attach.json"
    run = subprocess.run([str(Path(sys.executable).with_name("llmtop")), "attach", url, "--headless",
                          "--prompt", PROMPT, "--max-new-tokens", "5", "--json", str(out_json)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out_json.read_text())
    reply = httpx.post(url + "/v1/completions", timeout=300, json={
        "model": model, "prompt": PROMPT, "max_tokens": 5, "temperature": 0.0}).json()
    text = "".join(t["text"] for t in rec["tokens"][0])
    assert text == reply["choices"][0]["text"] and text.strip()
    assert run.stdout.startswith(PROMPT + text)
    m = rec["metrics"]
    assert m["n_tokens"] == reply["usage"]["completion_tokens"] == rec["endpoint"]["usage_tokens"][0]
    assert m["prompt_tokens"] == reply["usage"]["prompt_tokens"]
    assert m["e2e_ms"] == pytest.approx(m["ttft_ms"] + m["tpot_ms"] * (m["n_tokens"] - 1), rel=1e-9)
    assert m["ttft_ms"] > 0 and m["tpot_ms"] > 0
    assert rec["endpoint"]["server"] == "transformers" and rec["model"]["name"] == model
    assert rec["config"]["opts"] == {"backend": "endpoint"} and rec["stopped"] == ""


def test_bench_points_with_concurrent_requests(server: tuple[str, str]) -> None:
    url, _ = server
    srv = attach.connect(url)
    req = Request(PROMPT, max_new_tokens=2)
    points = [attach.bench_point(srv, req, batch, repeat=1, warmup=0) for batch in (1, 2, 4)]
    for batch, p in zip((1, 2, 4), points):
        assert p["status"] == "ok", p["error"]
        assert p["batch"] == batch and p["serving"][0]["completed"] == batch
        assert p["n_tokens"] == 2 and p["ttft_ms"] > 0 and p["tpot_ms"] > 0
        assert p["prompt_len"] == 4          # the server's own prompt-token count
    table = bench_report.table(bench_report.build_results(points))
    assert table.count("endpoint") >= 3, table
