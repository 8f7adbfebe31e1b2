"""vllm.platforms.interface: Platform (the base class of every platform in vLLM)."""

from __future__ import annotations


class Platform:
    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.device_name = device_type

    def is_cuda(self) -> bool:
        return self.device_type == "cuda"

    def is_rocm(self) -> bool:
        return self.device_type == "rocm"

    def is_cpu(self) -> bool:
        return self.device_type == "cpu"
