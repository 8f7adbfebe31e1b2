"""A fake of the `vllm` package for tests on machines without vLLM or a GPU.

It mirrors the part of vLLM's public API that llmtop's adapter uses, with vLLM's names,
argument names, defaults, validation messages and return shapes (checked against vLLM's
sources: vllm/__init__.py, vllm/engine/arg_utils.py, vllm/v1/engine/llm_engine.py,
vllm/sampling_params.py, vllm/inputs, vllm/outputs.py). Like vLLM (>= 0.6) the top-level
names are lazy attributes of the package, resolved on first use.

Its "model" is deterministic: see vllm/engine/llm_engine.py.
"""

from __future__ import annotations

import importlib

__version__ = "0.0.0+llmtop.fake"

_lazy_modules = {
    "EngineArgs": "vllm.engine.arg_utils:EngineArgs",
    "LLMEngine": "vllm.engine.llm_engine:LLMEngine",
    "PromptType": "vllm.inputs:PromptType",
    "TextPrompt": "vllm.inputs:TextPrompt",
    "TokensPrompt": "vllm.inputs:TokensPrompt",
    "CompletionOutput": "vllm.outputs:CompletionOutput",
    "RequestOutput": "vllm.outputs:RequestOutput",
    "SamplingParams": "vllm.sampling_params:SamplingParams",
}

__all__ = ["__version__", *_lazy_modules]


def __getattr__(name: str):
    if name in _lazy_modules:
        module_path, attr = _lazy_modules[name].split(":")
        return getattr(importlib.import_module(module_path), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
