"""backend=native through the real engine process: a toggle like any other (issue 16)."""

from __future__ import annotations

from llmtop.engine.protocol import Configure, Generate
from llmtop.engine.session import EngineSession


def _ids(outcome) -> list[int]:
    assert outcome.record is not None, outcome.message
    return [t["id"] for t in outcome.record["tokens"][0]]


def test_native_in_the_engine_equals_hf_and_reports_its_kv():
    session = EngineSession(None, 300)
    session.start()
    try:
        req = Generate(prompt_len=12, max_new_tokens=24, ignore_eos=True)
        hf = Configure("synthetic:tiny", "cpu", "fp32", {"attention": "eager"})
        assert not session.configure(hf).error_kind
        reference = _ids(session.generate(req))
        for kv in ("static", "paged"):
            native = Configure("synthetic:tiny", "cpu", "fp32",
                               {"backend": "native", "kv": kv, "attention": "eager"})
            outcome = session.configure(native)
            assert not outcome.error_kind, outcome.message
            assert session.applied.opts["backend"] == "native"
            run = session.generate(req)
            assert _ids(run) == reference, kv
            rec = run.record
            assert rec["config"]["opts"]["backend"] == "native" and rec["kv"] == kv
            assert 0 < rec["kv_used_bytes"] <= rec["kv_reserved_bytes"]
        # one line for what native cannot run, and the engine goes on
        bad = session.configure(Configure("synthetic:tiny", "cpu", "fp32",
                                          {"backend": "native", "kv": "static", "compile": "full"}))
        assert bad.error_kind == "config" and "\n" not in bad.message, bad.message
        assert "CUDA" in bad.message
    finally:
        session.close()


def test_native_conflicts_are_one_line_before_anything_loads():
    from llmtop.engine import catalogue

    why = catalogue.conflicts({**catalogue.DEFAULTS, "backend": "native"})
    assert why == "backend=native preallocates its KV cache: choose kv=static or kv=paged"
    assert catalogue.conflicts({**catalogue.DEFAULTS, "backend": "native", "kv": "paged",
                                "compile": "full"}) is None   # native captures paged decode
    assert catalogue.conflicts({**catalogue.DEFAULTS, "kv": "paged", "compile": "full"})
