"""dtype: the weights' and activations' number format."""

from __future__ import annotations

from . import Availability, Axis, Here

AXIS = Axis(
    name="dtype", order=4, help="weights and activations",
    options={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"},
    default="bf16",
    why_default="what Llama checkpoints ship in; fp32 doubles the bytes every token reads",
    reload=True,   # the weights are loaded in it
)


def conflicts(opts: dict[str, str]) -> str | None:
    return None


def availability(here: Here) -> dict[str, Availability]:
    return {"bf16": Availability(True),
            "fp16": Availability(True, "" if here.cuda else "fp16 matmuls are slow on most CPUs"),
            "fp32": Availability(True)}
