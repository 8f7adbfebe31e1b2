"""backend: the library that runs the model (engine/backends/ holds one class for each)."""

from __future__ import annotations

from . import Availability, Axis, Here

AXIS = Axis(
    name="backend", order=5, help="inference library",
    options={"hf": "transformers' model forward, driven by llmtop's loop",
             "vllm": "vLLM's engine: paged attention, CUDA graphs, its own tensor parallelism",
             "native": "llmtop's own decode path: fused weights, static or paged KV, the decode "
                       "step in CUDA graphs (compile=full)"},
    default="hf",
    why_default="the other axes are transformers' options; vLLM brings its own",
    reload=True,   # another library loads the model
)


def conflicts(opts: dict[str, str]) -> str | None:
    if opts.get("backend") == "native":
        return _native_conflicts(opts)
    if opts.get("backend") != "vllm":
        return None
    if opts.get("attention") not in ("sdpa", "flash"):
        return "backend=vllm brings its own attention kernels: leave attention at sdpa"
    if opts.get("compile", "off") != "off":
        return "backend=vllm compiles and captures its own CUDA graphs: leave compile=off"
    if opts.get("kv") == "static":
        return "backend=vllm manages its own paged KV cache: leave kv at dynamic or paged"
    return None


def _native_conflicts(opts: dict[str, str]) -> str | None:
    if opts.get("kv") not in ("static", "paged"):
        return "backend=native preallocates its KV cache: choose kv=static or kv=paged"
    if opts.get("compile", "off") == "layers":
        return ("backend=native compiles its whole decode step (compile=full) or nothing: "
                "compile=layers is the hf recipe")
    if opts.get("attention") == "flash_attention_2":
        return "backend=native runs PyTorch's SDPA kernels and flex, not the flash-attn package"
    return None


def availability(here: Here) -> dict[str, Availability]:
    from ..backends.vllm import vllm_available   # reads vLLM's metadata; never imports it

    ok, why = vllm_available(here.device)
    return {"hf": Availability(True),
            "vllm": Availability(ok, why or "vLLM's engine: paged attention, CUDA graphs"),
            "native": Availability(True, "" if here.cuda else
                                   "on a CPU without CUDA graphs: compile=off only")}
