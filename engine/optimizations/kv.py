"""kv: the KV cache (transformers' dynamic or static cache, or continuous batching's pages)."""

from __future__ import annotations

from . import Availability, Axis, Here

AXIS = Axis(
    name="kv", order=1, help="KV cache",
    options={
        "dynamic": "grows with every token (transformers' DynamicCache)",
        "static": "preallocated at a fixed length (StaticCache): fixed shapes for compile=full",
        "paged": "a paged cache: transformers' continuous batching (hf), llmtop's block pool "
                 "(native)",
    },
    default="dynamic",
    why_default="transformers' own default; it needs no length known in advance",
    presets={"baseline": "dynamic", "study": "dynamic", "max": "static"},
)


def conflicts(opts: dict[str, str]) -> str | None:
    if opts.get("backend") == "native":   # its own paged cache: flex and compile=full run on it
        return None
    if opts.get("kv") == "paged" and opts.get("attention") == "flex":
        return ("kv=paged runs transformers' continuous batching, which supports eager, sdpa "
                "and flash attention, not flex")
    if opts.get("kv") == "paged" and opts.get("compile", "off") != "off":
        return "kv=paged runs through continuous batching, which llmtop does not compile"
    return None


def availability(here: Here) -> dict[str, Availability]:
    from ..paged import paged_available

    ok, why = paged_available()
    return {"dynamic": Availability(True), "static": Availability(True),
            "paged": Availability(ok, why or "hf: continuous batching; native: a block pool")}
