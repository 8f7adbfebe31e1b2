"""A fake of the `vllm` package for tests on machines without vLLM or a GPU.

It mirrors the part of vLLM 0.26.0's public API that llmtop's adapter uses, with vLLM's
names, argument names, defaults, validation messages and return shapes, and the behaviour a
caller sees (async steps, chunked prefill, prefix caching, refusals, tp workers: listed in
vllm/engine/llm_engine.py). scripts/vllm_contract.py checks the same contract against this
fake and the real 0.26.0 wheel. As in vLLM, the top-level names are lazy attributes of the
package (MODULE_ATTRS), resolved on first use.

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
