"""vllm.inputs: prompt shapes (TypedDicts, as in vLLM)."""

from __future__ import annotations

from typing import TypedDict, Union

from typing_extensions import NotRequired


class TextPrompt(TypedDict):
    prompt: str
    multi_modal_data: NotRequired[object]
    mm_processor_kwargs: NotRequired[dict]
    cache_salt: NotRequired[str]


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    token_type_ids: NotRequired[list[int]]
    multi_modal_data: NotRequired[object]
    mm_processor_kwargs: NotRequired[dict]
    cache_salt: NotRequired[str]


PromptType = Union[str, TextPrompt, TokensPrompt]

__all__ = ["PromptType", "TextPrompt", "TokensPrompt"]
