"""The correctness guard: does this configuration produce the baseline's greedy tokens?

The baseline (eager attention, dynamic cache, no compile) is traced right after each load;
every configuration is then traced on the same check prompt (each backend's `trace`, in
engine/backends/). Where the ids first differ, the contexts are still identical, so the logit
gap there says how close the call was (bf16 kernels that sum in another order often flip a
near-tie: that is a numerics fact, not a bug).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtop.engine.protocol import GuardResult

CHECK_PROMPT = "The largest continent is"
CHECK_TOKENS = 12
BASELINE = "attention=eager kv=dynamic compile=off"


@dataclass
class Trace:
    ids: list[int]
    logits: list[torch.Tensor]   # per step, last position, float32 on the host


def compare(baseline: Trace, current: Trace) -> GuardResult:
    """Where the greedy ids first differ; the logit gap there when both traces have logits."""
    with_logits = bool(baseline.logits and current.logits)
    for k, (a, b) in enumerate(zip(baseline.ids, current.ids)):
        if a != b:
            diff = (float((baseline.logits[k] - current.logits[k]).abs().max())
                    if with_logits else None)
            return GuardResult("diverged", k, diff, len(baseline.ids), BASELINE)
    diff = (max(float((a - b).abs().max()) for a, b in zip(baseline.logits, current.logits))
            if with_logits else None)
    return GuardResult("identical", None, diff, len(baseline.ids), BASELINE)
