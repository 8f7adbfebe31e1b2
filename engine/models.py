"""Loading a model (and its tokenizer) for a ModelSpec onto a device, in a dtype."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from . import spec as specs
from . import tp as tensor_parallel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Progress = Callable[[str, "float | None"], None]


@dataclass
class Loaded:
    model: Any
    tokenizer: Any | None   # None only for a synthetic model when no tokenizer is at hand
    spec: specs.ModelSpec
    device: str
    dtype: str
    tp: int = 1                                       # tensor-parallel ranks (engine/tp.py)
    devices: list[str] = field(default_factory=list)  # every rank's device, rank 0 first
    gpus: list[int] = field(default_factory=list)     # the same GPUs, as nvidia-smi numbers them
    gpu_choice: str = ""                              # why those (engine/tp.py place)

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        # with tp > 1 the parameters are DTensors: numel() is the whole model's, all ranks
        params = sum(p.numel() for p in self.model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return dict(
            name=self.spec.name, params=params, weight_bytes=weight_bytes,
            layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads, hidden=cfg.hidden_size, vocab=cfg.vocab_size,
            dtype=self.dtype, device=self.device, synthetic=self.spec.synthetic,
            source=self.spec.path, tp=self.tp, devices=self.devices or [self.device],
            gpus=list(self.gpus), gpu_choice=self.gpu_choice,
            kv_bytes_per_token=kv_bytes_per_token(self.model))


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V one token adds to the cache, all layers together.

    The one derivation (sent in ModelInfo and the record): with the config's own head_dim,
    which differs from hidden / heads for some models.
    """
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem


def convert_embedded(progress: Progress) -> Path:
    """Dequantize the embedded GGUF once into a bf16 safetensors cache; later loads take ~1 s.

    Written to a temporary folder and renamed, so two processes converting at once (two
    terminals, parallel tests) never see a half-written cache.
    """
    target = specs.embedded_cache()
    if (target / "model.safetensors").exists():
        return target
    gguf = specs.embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        progress("first start only: reading the GGUF tokenizer", 0.05)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress("first start only: dequantizing the GGUF weights to bf16", 0.2)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.bfloat16)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        progress("first start only: writing the bf16 cache (later starts read it in ~1 s)", 0.8)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            os.rename(work, target)
        except OSError:  # another process won the race; its cache is as good as ours
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def synthetic_tokenizer() -> Any | None:
    """The embedded model's tokenizer: its 49152 ids cover Llama-2's 32000, so text shows."""
    folder = specs.embedded_cache()
    if (folder / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(folder)
    return None


def build_synthetic(shape: str, device: str, dtype: torch.dtype, attn: str,
                    shard_first: int = 1) -> Any:
    """Random weights built directly on the device in the target dtype (never fp32 on host).

    `shard_first` > 1 (a tensor-parallel rank): the model is sharded while still on the meta
    device, so this rank only ever allocates and initialises its own slices (DTensor's random
    ops keep the ranks consistent). That is how a 70B shape loads on GPUs that cannot hold it
    whole; its weights differ from the tp=1 build's, so it is used only when they must.
    """
    cfg = LlamaConfig(**specs.SYNTHETIC_SHAPES[shape], rms_norm_eps=1e-5,
                      attn_implementation=attn, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    if shard_first > 1:
        model = tensor_parallel.shard(model, shard_first)
    model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.device(device):
        model.initialize_weights()  # also recomputes the rotary buffers to_empty left as garbage
    return model


def synthetic_bytes(shape: str, dtype: torch.dtype) -> int:
    """Weight bytes of a synthetic shape, counted on the meta device (nothing allocated)."""
    cfg = LlamaConfig(**specs.SYNTHETIC_SHAPES[shape])
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def fits_whole(shape: str, device: str, dtype: torch.dtype) -> bool:
    """Whether a rank can build the whole synthetic model before keeping its slice: on a GPU,
    within 80% of its free memory (Llama-2-70B's 138 GB cannot on an 80 GB H100)."""
    if not device.startswith("cuda"):
        return True
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return synthetic_bytes(shape, dtype) < 0.8 * free


def load(spec: specs.ModelSpec, device: str, dtype: str, attn: str,
         progress: Progress, tp: int = 1, devices: list[str] | None = None) -> Loaded:
    """The model for `spec` on `device`, in eval mode with gradients off.

    With `tp` > 1 (every rank calls this in lockstep, engine/tp.py) this rank holds its shard.
    """
    torch_dtype = DTYPES[dtype]
    if spec.kind == "synthetic":
        progress(f"building random weights for {spec.name} on {device}", 0.1)
        if tp > 1 and not fits_whole(spec.path, device, torch_dtype):
            model = build_synthetic(spec.path, device, torch_dtype, attn, shard_first=tp)
        else:
            model = build_synthetic(spec.path, device, torch_dtype, attn)
            if tp > 1:  # same seed on every rank: the full weights of tp=1, then this rank's slice
                model = tensor_parallel.shard(model, tp)
        tokenizer = synthetic_tokenizer()
    else:
        if spec.kind == "embedded":
            folder, gguf_file = str(convert_embedded(progress)), None
        elif spec.kind == "gguf":
            folder, gguf_file = str(Path(spec.path).parent), Path(spec.path).name
        else:
            folder, gguf_file = spec.path, None
        progress(f"loading {spec.name}", 0.95)
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        if spec.kind == "hub":
            extra["local_files_only"] = True
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        # tp > 1: transformers reads only this rank's slices, onto its device (LOCAL_RANK)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype,
                                                     attn_implementation=attn, **extra,
                                                     **tensor_parallel.from_pretrained_kwargs(tp))
        if tp == 1:
            model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    progress("weights loaded", 1.0)
    return Loaded(model, tokenizer, spec, device, dtype, tp, devices or [device])
