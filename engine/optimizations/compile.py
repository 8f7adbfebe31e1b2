"""compile: torch.compile, the study's per-layer recipe or the whole forward with CUDA graphs."""

from __future__ import annotations

from . import Availability, Axis, Here

AXIS = Axis(
    name="compile", order=2, help="torch.compile",
    options={
        "off": "eager PyTorch",
        "layers": "the study's recipe: each layer's self-attention compiled, dynamic shapes",
        "full": "the whole forward, mode reduce-overhead (CUDA graphs); needs kv=static",
    },
    default="off",
    why_default="compiling takes seconds to minutes before the first token",
    reload=True,   # a compiled forward cannot be cleanly un-compiled
    presets={"baseline": "off", "study": "layers", "max": "full"},
)


def conflicts(opts: dict[str, str]) -> str | None:
    if opts.get("compile") == "full" and opts.get("kv") != "static" and \
            opts.get("backend") != "native":   # native captures its paged decode step too
        return "compile=full captures CUDA graphs over fixed shapes: it requires kv=static"
    return None


def availability(here: Here) -> dict[str, Availability]:
    return {"off": Availability(True),
            "layers": Availability(True, "" if here.cuda else "compiles on CPU too, slowly (minutes)"),
            "full": Availability(True, "" if here.cuda else
                                 "no CUDA graphs on CPU: compile only, minutes per prompt length")}
