"""Ceilings measured on the model's kernels, cached with when and how busy, floors that hold."""

import time

import pytest
import torch

from llmtop.engine import ceilings, metrics


@pytest.fixture(scope="module")
def tiny():
    from llmtop.engine import models, spec

    return models.load(spec.resolve("synthetic:tiny"), "cpu", "bf16", "eager", lambda *_: None)


def test_the_flop_ceiling_runs_the_models_linear_shapes_and_counts_the_head_once(tiny):
    model = tiny.model
    cfg = model.config
    shapes = ceilings.linear_shapes(model)
    assert (cfg.intermediate_size, cfg.hidden_size) in shapes and len(shapes) == 7  # q k v o gate up down
    body, head = ceilings.flop_params(model)
    assert head == cfg.vocab_size * cfg.hidden_size
    assert body == cfg.num_hidden_layers * sum(o * i for o, i in shapes)


def test_cached_ceilings_carry_a_time_and_a_load_and_go_stale(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTOP_CACHE", str(tmp_path))
    monkeypatch.delenv("LLMTOP_REMEASURE", raising=False)
    first = ceilings.get("cpu", torch.bfloat16, tiny.model)
    assert first["kernel"] == ceilings.KERNEL and "remeasured" not in first
    assert first["peak_tflops"] > 0 and first["mem_bw_gb_s"] > 0
    assert time.time() - first["measured_at"] < 60 and first["load"] >= 0
    assert ceilings.get("cpu", torch.bfloat16, tiny.model) == first        # cached
    now = first["measured_at"]
    assert ceilings.stale(first, now=now, load=first["load"]) is None
    assert "days ago" in ceilings.stale(first, now=now + 8 * 86400, load=0)
    busy = {**first, "load": 3.5}
    assert "busy machine" in ceilings.stale(busy, now=now, load=0.2)
    assert ceilings.stale(busy, now=now, load=3.0) is None   # as busy now: measuring won't help
    old = {k: v for k, v in first.items() if k not in ("kernel", "measured_at")}
    assert "older llmtop" in ceilings.stale(old)
    monkeypatch.setenv("LLMTOP_REMEASURE", "1")
    again = ceilings.get("cpu", torch.bfloat16, tiny.model)
    assert "LLMTOP_REMEASURE" in again["remeasured"] and again["measured_at"] >= now


def test_a_beaten_floor_is_remeasured_noted_and_never_over_100(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTOP_CACHE", str(tmp_path))
    monkeypatch.delenv("LLMTOP_REMEASURE", raising=False)
    m = metrics.run_metrics(0, [2_000_000, 3_000_000, 4_000_000], prompt_tokens=512)
    wb = 2 * sum(p.numel() for p in tiny.model.parameters())
    low = {"device_name": "cpu", "mem_bw_gb_s": 1e-3, "peak_tflops": 1e-9}  # the a @ b trap
    roof, held, events = ceilings.hold_floors(low, m, wb, 0, tiny.model, "cpu", torch.bfloat16)
    assert [e.kind for e in events] == ["ceiling"] and "re-measured" in events[0].detail
    assert "decode ran at" in held["remeasured"] and "prefill ran at" in held["remeasured"]
    assert roof.beaten == [] and 0 < roof.decode_pct <= 100 and 0 < roof.prefill_pct <= 100
    calm = {**held}
    again, same, none = ceilings.hold_floors(calm, m, wb, 0, tiny.model, "cpu", torch.bfloat16)
    assert none == [] and same is calm and again.prefill_pct <= 100
