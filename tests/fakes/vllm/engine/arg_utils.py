"""vllm.engine.arg_utils: EngineArgs (the fields llmtop may pass, with vLLM 0.26's defaults).

Like vLLM 0.26 it has no `swap_space` nor `max_seq_len_to_capture` (a dataclass: passing them
raises TypeError); scripts/vllm_contract.py checks these names against the real wheel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EngineArgs:
    model: str = "facebook/opt-125m"
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    download_dir: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    pipeline_parallel_size: int = 1
    device_ids: list[int | str] | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    cpu_offload_gb: float = 0
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    disable_log_stats: bool = False
    revision: str | None = None
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None
    async_scheduling: bool | None = None
    compilation_config: Any = None
    hf_overrides: dict[str, Any] | None = None
