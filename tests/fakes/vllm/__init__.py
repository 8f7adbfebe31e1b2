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

MODULE_ATTRS = {   # as vLLM's own table: relative module paths, resolved on first use
    "EngineArgs": ".engine.arg_utils:EngineArgs",
    "LLMEngine": ".engine.llm_engine:LLMEngine",
    "PromptType": ".inputs:PromptType",
    "TextPrompt": ".inputs:TextPrompt",
    "TokensPrompt": ".inputs:TokensPrompt",
    "CompletionOutput": ".outputs:CompletionOutput",
    "RequestOutput": ".outputs:RequestOutput",
    "SamplingParams": ".sampling_params:SamplingParams",
}

__all__ = ["__version__", *MODULE_ATTRS]


def __getattr__(name: str):
    if name in MODULE_ATTRS:
        module_name, attr = MODULE_ATTRS[name].split(":")
        return getattr(importlib.import_module(module_name, __package__), attr)
    raise AttributeError(f"module {__package__} has no attribute {name}")
