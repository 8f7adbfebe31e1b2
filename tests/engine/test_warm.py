"""#15.2: nothing compiles inside a measured run. compile=full's graphs are per batch size and
static-cache length; a run's length covers its prompt and new tokens, and `warm` builds what it
needs before the clock starts. Stalls that still land in a run are timed and leave the steady
TPOT alone."""

from __future__ import annotations


import pytest

from llmtop.engine import metrics
from llmtop.engine.protocol import EngineEvent


@pytest.fixture(scope="module")
def backend():
    """HfBackend on synthetic:tiny with kv=static, its decoder the real GraphWatch around the
    eager forward (torch.compile on a CPU takes minutes; the watch is what marks new shapes)."""
    from llmtop.engine import catalogue, models, spec, watch
    from llmtop.engine.backends.hf import HfBackend

    loaded = models.load(spec.resolve("synthetic:tiny"), "cpu", "fp32", "eager", lambda *a: None)
    events: list = []
    b = HfBackend(loaded, {**catalogue.DEFAULTS, "kv": "static"}, events.append)
    b.decoder = watch.GraphWatch(loaded.model.forward, events.append)
    return b, events


def _run(b, batch: int, prompt: int, new: int) -> list:
    import torch

    from llmtop.engine.generate import Inputs, Sampling

    ids = torch.randint(100, 400, (batch, prompt))
    return list(b.generate_steps(Inputs(ids, torch.ones_like(ids), [], prompt), new, Sampling(),
                                 set(), True, lambda: False))


def test_a_warmed_run_meets_no_new_graph(backend):
    b, events = backend
    events.clear()
    b.warm(2, 10, 20)              # 30 tokens: the 256 bucket
    compiled = [e for e in events if e.kind == "compile"]
    assert len(compiled) == 1 and "batch 2, cache 256" in compiled[0].detail
    assert compiled[0].duration_ms is not None and compiled[0].duration_ms >= 0
    events.clear()
    steps = _run(b, 2, 10, 20)
    assert len(steps) == 20 and not [e for e in events if isinstance(e, EngineEvent)]
    b.warm(2, 10, 20)              # known: nothing to do
    assert not events


def test_an_unwarmed_shape_would_compile_inside_the_run(backend):
    """The failure warm prevents (the bench's 4-token warm-up at 256, its run at 512)."""
    b, events = backend
    events.clear()
    _run(b, 3, 4, 4)
    assert [e.kind for e in events][:1] == ["compile"]


def test_stalls_inside_a_run_leave_the_steady_tpot():
    stamps = [1_000, 2_000, 3_000, 53_000, 54_000]          # one 50 us gap: a recompile
    m = metrics.run_metrics(0, stamps, stalls=[(3_500, 52_500), (-9_000, -1_000)])
    assert m.stalls == 1 and m.stall_ms == pytest.approx(0.049)
    assert m.tpot_ms == pytest.approx(0.01325)              # vLLM's definition, stall included
    assert m.tpot_steady_ms == pytest.approx(0.001)
    one = metrics.run_metrics(0, [5])   # one token: no decode gap; tables print n/a
    assert one.stalls == 0 and one.tpot_steady_ms == one.tpot_ms
