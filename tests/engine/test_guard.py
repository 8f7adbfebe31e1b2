"""The guard's three verdicts: on made-up traces (every branch) and on real kernels on the CPU."""

import pytest
import torch

from llmtop.engine import guard

EPS_BF16 = torch.finfo(torch.bfloat16).eps


def logits(*top: float, vocab: int = 8) -> torch.Tensor:
    z = torch.zeros(vocab)
    z[: len(top)] = torch.tensor(top)
    return z


def baseline() -> guard.Trace:
    # token 0 wins each step; step 1 is a near-tie (margin 0.01), step 2 a clear call (margin 5)
    steps = [logits(20.0, 10.0), logits(20.0, 19.99), logits(20.0, 15.0)]
    return guard.Trace([0, 0, 0], steps, None, EPS_BF16, 30)


def test_tolerance_scales_with_epsilon_depth_and_logit_magnitude():
    t = guard.tolerance(EPS_BF16, 30, 25.0)
    assert 1.0 < t < 5.0   # a few logits for bf16 at |logit| 25, 30 layers
    assert guard.tolerance(torch.finfo(torch.float32).eps, 30, 25.0) < 1e-4
    assert guard.tolerance(EPS_BF16, 30, 50.0) == pytest.approx(2 * t)
    assert guard.tolerance(EPS_BF16, 120, 25.0) > t


def test_same_ids_read_identical_with_their_logit_distance():
    b = baseline()
    cur = guard.Trace([0, 0, 0], [z + 0.25 for z in b.logits], [0, 0], EPS_BF16, 30)
    r = guard.compare(b, cur)
    assert (r.status, r.diverged_at, r.margin, r.tolerance) == ("identical", None, None, None)
    assert r.logit_distance == pytest.approx(0.25) and r.tokens == 3


def test_a_flipped_near_tie_reads_equivalent_and_later_steps_are_still_compared():
    b = baseline()
    flipped = logits(19.99, 20.0)   # rounding moved the near-tie at step 1
    cur = guard.Trace([0, 1, 0], [b.logits[0], flipped, b.logits[2] + 0.5], [0, 0], EPS_BF16, 30)
    r = guard.compare(b, cur)
    assert r.status == "equivalent" and r.diverged_at == 1 and r.beyond_at is None
    assert r.margin == pytest.approx(0.01, rel=1e-3) and r.margin < r.tolerance
    assert r.logit_distance == pytest.approx(0.5)   # step 2, after the flip, was compared


def test_a_clear_call_flipped_reads_diverged_even_after_an_excused_flip():
    """The synthetic wrong trace: step 1 a near-tie (excused), step 2 a 5-logit call lost."""
    b = baseline()
    wrong = [b.logits[0], logits(19.99, 20.0), logits(15.0, 20.0)]
    cur = guard.Trace([0, 1, 1], wrong, [0, 0], EPS_BF16, 30)
    r = guard.compare(b, cur)
    assert r.status == "diverged" and r.diverged_at == 1 and r.beyond_at == 2
    assert r.margin == pytest.approx(0.01, rel=1e-3)   # the first difference's margin, as agreed


def test_a_free_running_trace_is_compared_only_up_to_its_first_difference():
    b = baseline()
    # not teacher-forced: after its flip at step 1 its context is its own, so step 2's
    # flip (against a 5-logit margin) says nothing and is not counted
    cur = guard.Trace([0, 1, 1], [b.logits[0], logits(19.99, 20.0), logits(0.0, 9.0)])
    r = guard.compare(b, cur)
    assert r.status == "equivalent" and r.logit_distance == pytest.approx(0.01, rel=1e-3)


def test_ids_only_traces_use_the_baselines_margin_and_without_dtype_nothing_is_excused():
    b = baseline()
    assert guard.compare(b, guard.Trace([0, 1, 1], [])).status == "equivalent"  # paged, vLLM
    assert guard.compare(b, guard.Trace([1, 1, 1], [])).status == "diverged"    # margin 10
    unknown = guard.Trace(b.ids, b.logits)   # no eps: no tolerance can be derived
    r = guard.compare(unknown, guard.Trace([0, 1, 0], b.logits))
    assert r.status == "diverged" and r.tolerance is None and r.beyond_at == 1


# ---- real kernels, in process, on the CPU --------------------------------------------------

def _load(name: str, dtype: str):
    from llmtop.engine import models, spec

    return models.load(spec.resolve(name), "cpu", dtype, "eager", lambda *_: None)


def _trace(loaded, attention: str, static: bool = False, forced=None) -> guard.Trace:
    """The check prompt through the hf backend, as the engine traces it."""
    from llmtop.engine import generate
    from llmtop.engine.backends.hf import HfBackend
    from llmtop.engine.protocol import Generate

    opts = {"attention": attention, "kv": "static" if static else "dynamic", "compile": "off",
            "gemm": "default"}
    cfg = loaded.model.config
    req = Generate(prompt=guard.CHECK_PROMPT if loaded.tokenizer is not None else None,
                   prompt_len=None if loaded.tokenizer is not None else 16,
                   max_new_tokens=guard.CHECK_TOKENS)
    inputs = generate.prepare(req, loaded.tokenizer, cfg.vocab_size,
                              cfg.max_position_embeddings, "cpu")
    return HfBackend(loaded, opts, lambda e: None).trace(inputs, guard.CHECK_TOKENS, forced)


@pytest.mark.parametrize("name", [pytest.param("embedded", marks=pytest.mark.slow),
                                  "synthetic:tiny"])
def test_flash_against_eager_in_bf16_is_never_diverged(name):
    """Issue 15: the default's "diverged at token 5, max |dlogit| 0.516" was a bf16 tie."""
    loaded = _load(name, "bf16")
    base = _trace(loaded, "eager")
    flash = _trace(loaded, "flash", forced=base.ids)
    r = guard.compare(base, flash)
    assert r.status in ("identical", "equivalent"), r
    assert 0 < r.logit_distance < 2.0   # the kernels differ, by rounding
