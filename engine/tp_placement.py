"""Where tensor-parallel ranks go, and whether they can, decided before anything loads:
whole heads per rank (the model's attention and KV head counts), enough devices, and which
GPUs (the set `--gpus` names, else the best-linked set from the telemetry's link matrix,
profilers/gpu_set.py). engine/tp.py runs the ranks this places.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import catalogue
from . import spec as specs

EXTERNAL_ENV = "LLMTOP_TP_EXTERNAL"         # set by `python -m llmtop.torchrun` under torchrun

# ---- checks before anything is loaded ----------------------------------------------------------

def head_counts(spec: specs.ModelSpec) -> tuple[int, int]:
    """(attention heads, KV heads) of a model, read from its shape or config, never its weights."""
    if spec.kind == "synthetic":
        shape = specs.SYNTHETIC_SHAPES[spec.path]
        heads = shape["num_attention_heads"]
        return heads, shape.get("num_key_value_heads", heads)
    config_json: Path | None = None
    if spec.kind == "embedded" and (specs.embedded_cache() / "config.json").exists():
        config_json = specs.embedded_cache() / "config.json"
    elif spec.kind == "hf_dir":
        config_json = Path(spec.path) / "config.json"
    elif spec.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.path, "config.json")
        config_json = Path(found) if isinstance(found, str) else None
    if config_json is not None:
        cfg = json.loads(config_json.read_text())
        cfg = cfg.get("text_config") or cfg  # a multimodal config nests its decoder's
        heads = cfg.get("num_attention_heads")
        if heads is None:
            raise catalogue.OptionError(f"--tp: {config_json} names no num_attention_heads")
        return int(heads), int(cfg.get("num_key_value_heads") or heads)
    # a GGUF file (the embedded one before its first conversion): its metadata, no tensors
    from transformers import AutoConfig

    gguf = Path(spec.path) if spec.kind == "gguf" else specs.embedded_gguf()
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).get_text_config()
    return cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads


def device_index(device: str) -> int:
    """K of cuda:K (0 for plain "cuda"): rank r of a tensor-parallel group drives cuda:K+r."""
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0


def check(spec: specs.ModelSpec, device: str, size: int, opts: dict[str, str]) -> None:
    """Raises OptionError (one line) when `size` ranks cannot run this model here: before loading."""
    if size < 1:
        raise catalogue.OptionError("--tp must be at least 1")
    external = os.environ.get(EXTERNAL_ENV) == "1"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if external and size != world:  # torchrun started `world` ranks: all of them must take part
        raise catalogue.OptionError(f"--tp {size} under torchrun must equal its world size {world}")
    if size == 1:
        return
    heads, kv_heads = head_counts(spec)
    if heads % size or kv_heads % size:
        g = math.gcd(heads, kv_heads)
        fits = ", ".join(str(d) for d in range(1, g + 1) if g % d == 0)
        raise catalogue.OptionError(
            f"--tp {size} does not divide {spec.name}'s {heads} attention heads and {kv_heads} "
            f"KV heads: tensor parallelism splits whole heads (sizes that fit: {fits})")
    if opts.get("kv") == "paged" and opts.get("backend", "hf") != "native":
        raise catalogue.OptionError("kv=paged with --tp > 1 runs on backend=native (its block "
                                    "pool holds each rank's KV heads); transformers' continuous "
                                    "batching does not shard")
    if external:
        return  # torchrun's --nproc-per-node and --nnodes decided the GPUs
    if device.startswith("cuda:"):   # an explicit first GPU: the ranks take the next ones
        visible = torch.cuda.device_count()
        first = device_index(device)
        if first + size > visible:
            raise catalogue.OptionError(
                f"--tp {size} from {device} needs cuda:{first}..cuda:{first + size - 1}, but torch "
                f"sees {visible} GPU{'s' if visible != 1 else ''} (CUDA_VISIBLE_DEVICES picks them)")
    elif device.startswith("cuda"):  # plain cuda: the ranks' GPUs are placed from the topology
        visible = torch.cuda.device_count()
        if size > visible:
            raise catalogue.OptionError(
                f"--tp {size} needs {size} GPUs, but torch sees {visible} "
                f"(CUDA_VISIBLE_DEVICES picks them)")
    elif torch.cuda.is_available():
        raise catalogue.OptionError(
            "--tp > 1 runs on the CPU only where torch sees no GPU (transformers builds its "
            "device mesh on the accelerator): use --device cuda")


# ---- which GPU each rank drives ---------------------------------------------------------------

@dataclass
class Placement:
    """Where the ranks run, rank 0 first: torch's devices, and the same GPUs as the telemetry
    backend (nvidia-smi) numbers them, so telemetry follows the engine's GPUs."""

    devices: list[str]
    gpus: list[int] = field(default_factory=list)   # empty on a CPU, or where unknown
    why: str = ""


def place(device: str, size: int, named: list[int] | None) -> Placement:
    """Rank 0: the ranks' devices for a configuration (raises OptionError, one line).

    CPU: every rank on the CPU. `--gpus` named: those GPUs, in that order. `--device cuda:K`:
    cuda:K and the next ones (the user placed them). Plain `cuda` with N > 1: the set the
    link matrix recommends among the GPUs torch sees. With one rank and no `--gpus`, the device
    as given. Torch's numbering is CUDA_VISIBLE_DEVICES-relative; the mapping to the machine's
    numbering is gpu_set.visible_map's (by UUID, else by the variable).
    """
    from llmtop.profilers.gpu_set import GpuSetError

    if not device.startswith("cuda"):
        if named is not None:
            raise catalogue.OptionError("--gpus names GPUs: use --device cuda with it")
        return Placement([device] * size)
    if os.environ.get(EXTERNAL_ENV) == "1":
        if named is not None:
            raise catalogue.OptionError("under torchrun, torchrun places the ranks: drop --gpus")
        return Placement([device])   # each rank reports its own device (Ranks.devices)
    explicit = device.startswith("cuda:")
    if explicit and named is not None:
        raise catalogue.OptionError(f"--gpus and --device {device} both place the ranks: use "
                                    "--device cuda with --gpus")
    try:
        backend, devices, matrix = _telemetry()
        try:
            uuids = _cuda_uuids()
            env = os.environ.get("CUDA_VISIBLE_DEVICES")
            if explicit or (size == 1 and named is None):
                # plain "cuda" is torch's current device (0 unless someone set another)
                first = device_index(device) if explicit else _current_cuda()
                ordinals = [first + r for r in range(size)]
                return Placement([device] if size == 1 else [f"cuda:{k}" for k in ordinals],
                                 _backend_indices(devices, uuids, env, ordinals),
                                 "the device given" if size == 1 else f"from {device} on (--device)")
            from llmtop.profilers.gpu_set import choose

            chosen = choose(size, named, devices, matrix, uuids, env)
            return Placement(chosen.devices, chosen.gpus, chosen.why)
        finally:
            backend.close()
    except GpuSetError as e:
        raise catalogue.OptionError(str(e)) from None


def _telemetry() -> tuple[Any, list, Any]:
    """The GPU telemetry backend's devices and link matrix (none when no library loads)."""
    from llmtop.profilers.gpu import detect_backend

    backend = detect_backend()
    try:
        matrix = backend.topology()
    except Exception:  # a driver that cannot answer topology: choose without it
        matrix = None
    return backend, backend.devices(), matrix


def _current_cuda() -> int:
    try:
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _cuda_uuids() -> list[str | None]:
    """Each visible device's UUID as torch reports it (None where it cannot)."""
    out: list[str | None] = []
    for k in range(torch.cuda.device_count()):
        try:
            out.append(str(torch.cuda.get_device_properties(k).uuid))
        except Exception:
            out.append(None)
    return out


def _backend_indices(devices: list, uuids: list[str | None], env: str | None,
                     ordinals: list[int]) -> list[int]:
    """The backend's numbers for torch ordinals, or [] where the mapping is unknown."""
    from llmtop.profilers.gpu_set import GpuSetError, visible_map

    if not devices:
        return []
    try:
        back = {k: g for g, k in visible_map(devices, uuids, env).items()}
    except GpuSetError:
        return []
    return [back[k] for k in ordinals] if all(k in back for k in ordinals) else []
