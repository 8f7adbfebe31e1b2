"""The correctness guard: does this configuration compute what the baseline computes?

The baseline (eager attention, dynamic cache, no compile) is traced right after each load;
every configuration is then traced on the same check prompt (each backend's `trace`, in
engine/backends/), teacher-forced on the
baseline's ids: each step sees the baseline's context, so a token that flips does not make
every later step incomparable, and all steps are compared, not just those before the first
difference.

Three verdicts. identical: the same greedy ids. equivalent: ids differ only where the
baseline's margin (its top-1 logit minus its logit of the token this configuration chose)
is within what the dtype's rounding can flip; bf16 kernels that sum in another order flip
near-ties, and that is a numerics fact, not a bug. diverged: some token flipped against a
margin rounding cannot explain; only this is an alarm. See `tolerance` for the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from llmtop.engine.metrics import first_divergence
from llmtop.engine.protocol import GuardResult

CHECK_PROMPT = "The largest continent is"
CHECK_TOKENS = 12
BASELINE = "attention=eager kv=dynamic compile=off"
CONFIDENCE = 2.0   # lambda of the probabilistic rounding bound (see tolerance)


@dataclass
class Trace:
    ids: list[int]                  # the greedy choice at each step
    logits: list[torch.Tensor]      # per step, last position, float32 on the host ([]: none)
    fed: list[int] | None = None    # ids fed back after each step (None: its own choices)
    eps: float = 0.0                # machine epsilon of the model's dtype (0: not known)
    layers: int = 0                 # decoder layers the logits went through


def tolerance(eps: float, layers: int, scale: float) -> float:
    """The largest top-1 margin that rounding in a dtype of epsilon `eps` can flip.

    Two configurations that compute the same function in another order differ only by
    rounding. The residual stream of an L-layer decoder is rounded to the dtype about
    n = 2L + 1 times on the way to the logits (after attention and MLP of each layer, then
    the head's output); independent rounding errors grow as a random walk, so each logit
    carries a relative error of about lambda * sqrt(n) * u (Higham and Mary's probabilistic
    bound, u = eps / 2 the unit roundoff) of the logits' magnitude `scale` (the baseline's
    largest |logit| at that step). A flip moves two logits in opposite directions, so
    margins up to 2 x that, lambda * sqrt(n) * eps * scale, can flip. lambda = 2: on SmolLM2
    (CPU, SDPA and flex kernels against eager attention) the largest single-logit differences
    measured 1.3 x (bf16) and up to 3.5 x (fp32, where summation order, not storage, rounds)
    the sqrt(n) u estimate, and a flip needs the pair's difference, which two such maxima
    rarely reach together. For bf16, |logit| ~ 25 and 30 layers this is ~3 logits (the flips
    seen there had margin 0: exact bf16 ties); for fp32 ~4e-5, so fp32 has no excuse for a
    visible flip.
    """
    return CONFIDENCE * math.sqrt(2 * layers + 1) * eps * scale


def _comparable(baseline: Trace, current: Trace) -> list[int]:
    """The steps whose context was the baseline's: before the first difference, and all of
    them for a trace teacher-forced on the baseline's ids."""
    context = current.fed if current.fed is not None else current.ids
    steps = []
    for k in range(min(len(baseline.ids), len(current.ids))):
        if list(context[:k]) != baseline.ids[:k]:
            break
        steps.append(k)
    return steps


def compare(baseline: Trace, current: Trace) -> GuardResult:
    """The guard's verdict on `current` against `baseline` (see the module's docstring).

    An ids-only trace (paged, vLLM) is compared up to its first difference, whose margin the
    baseline's logits still give. Without the baseline's logits or dtype no margin can
    excuse a flip: any difference then reads diverged.
    """
    first = first_divergence(baseline.ids, current.ids)
    steps = _comparable(baseline, current)
    with_logits = bool(baseline.logits and current.logits)
    gaps = [float((baseline.logits[k] - current.logits[k]).abs().max()) for k in steps] \
        if with_logits else []
    distance = max(gaps) if gaps else None
    if first is None:
        return GuardResult("identical", None, distance, len(baseline.ids), BASELINE,
                           logit_distance=distance)
    judged = bool(baseline.logits) and baseline.eps > 0
    flips = []   # (step, margin, tolerance) of every comparable step whose token flipped
    for k in steps:
        if baseline.ids[k] != current.ids[k] and judged:
            z = baseline.logits[k]
            flips.append((k, float(z[baseline.ids[k]] - z[current.ids[k]]),
                          tolerance(baseline.eps, baseline.layers, float(z.abs().max()))))
    beyond = next((k for k, m, t in flips if m > t), None)
    _, margin, tol = flips[0] if flips else (first, None, None)
    status = "equivalent" if flips and beyond is None else "diverged"
    return GuardResult(status, first, gaps[first] if first < len(gaps) else None,
                       len(baseline.ids), BASELINE, margin=margin, tolerance=tol,
                       logit_distance=distance, beyond_at=beyond if judged else first)
