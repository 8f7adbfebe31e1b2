"""The headless table says what the record says: guard states, stalls, n/a, never nan or >100 %."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from llmtop.engine import metrics
from llmtop.headless import metrics_table

PROMPT = ("Write a short paragraph about the history of the printing press in Europe, from "
          "Gutenberg's workshop in Mainz to the spread of presses across the continent.")


def record(stamps, stalls=(), guard=None, roof=True):
    m = metrics.run_metrics(0, stamps, 1, 40, stalls)
    rec = {"metrics": m.to_dict(), "config": {"opts": {"attention": "sdpa"}},
           "model": {"name": "SmolLM2", "params": 134_515_008, "dtype": "bf16", "device": "cpu"},
           "guard": guard or {}, "ceilings": {"mem_bw_gb_s": 30.0, "peak_tflops": 0.01}}
    if roof:
        from dataclasses import asdict

        rec["roofline"] = asdict(metrics.roofline(m, 270_000_000, 106_000_000, 0, 30.0, 0.01,
                                                  head_params=28_000_000))
    return rec


def test_a_run_with_a_stall_shows_steady_tpot_and_one_without_does_not():
    ms = 1_000_000
    stamps = [100 * ms + i * 20 * ms for i in range(10)]
    stamps = stamps[:5] + [s + 31_000 * ms for s in stamps[5:]]
    table = metrics_table(record(stamps, stalls=[(stamps[4] + ms, stamps[4] + 31_001 * ms)]))
    line = next(r for r in table.splitlines() if r.startswith("steady TPOT"))
    assert "20.00 ms" in line and "without 1 stall (31.0 s" in line
    assert "steady TPOT" not in metrics_table(record(stamps))


def test_the_three_guard_states_read_as_such():
    base = {"baseline": "attention=eager kv=dynamic compile=off", "tokens": 12}
    same = metrics_table(record([1, 2], guard={**base, "status": "identical", "diverged_at": None,
                                              "logit_distance": 0.0}))
    assert "guard     identical to attention=eager" in same
    eq = metrics_table(record([1, 2], guard={**base, "status": "equivalent", "diverged_at": 5,
                                            "margin": 0.0, "tolerance": 3.1,
                                            "logit_distance": 0.52}))
    assert "equivalent" in eq and "token 5" in eq and "margin 0 <= tolerance 3.1" in eq
    assert "DIVERGED" not in eq
    bad = metrics_table(record([1, 2], guard={**base, "status": "diverged", "diverged_at": 1,
                                             "margin": 0.002, "tolerance": 5e-5, "beyond_at": 1,
                                             "logit_distance": 0.36}))
    assert "DIVERGED from attention=eager kv=dynamic compile=off at token 1" in bad


def test_a_one_token_run_reads_na_and_never_nan():
    table = metrics_table(record([50_000_000]))
    assert "nan" not in table.lower()
    assert re.search(r"TPOT +n/a", table) and "decode n/a (one token)" in table


@pytest.mark.slow
def test_a_real_prompt_reads_within_its_floor_and_one_token_reads_na(tmp_path):
    """Issue 15: "prefill 157% of the 2686.93 ms floor" on a 2-core CPU; and "nan%"."""
    out = tmp_path / "run.json"
    p = subprocess.run([sys.executable, "-m", "llmtop", "run", "--headless", "--prompt", PROMPT,
                        "--max-new-tokens", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(out.read_text())
    roof, ceil = rec["roofline"], rec["ceilings"]
    assert rec["metrics"]["prompt_tokens"] > 20
    assert roof["prefill_pct"] is not None and 0 < roof["prefill_pct"] <= 100, (roof, ceil)
    assert roof["decode_pct"] is None and ceil["kernel"].startswith("F.linear")
    assert "nan" not in p.stdout.split("\n---", 1)[1].lower()
    assert "decode n/a" in p.stdout and re.search(r"prefill \d+% of the", p.stdout)
    assert rec["guard"]["status"] in ("identical", "equivalent")
    assert "guard     " in p.stdout


def test_ceilings_measured_on_a_busy_machine_or_re_measured_say_so():
    busy = record([1, 2])
    busy["ceilings"]["load"] = 9.9
    assert "measured under load 9.9 per CPU" in metrics_table(busy)
    calm = record([1, 2])
    calm["ceilings"]["load"] = 0.1
    assert "ceilings  " not in metrics_table(calm)
    calm["ceilings"]["remeasured"] = "prefill ran at 157% of its floor on the cached ceilings"
    assert "ceilings  re-measured: prefill ran at 157%" in metrics_table(calm)
