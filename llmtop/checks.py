"""Checks of a command's input that need neither torch nor the engine, so bad input costs
milliseconds and one line (exit code 2), not a traceback after the model has loaded.

The device check reads which torch build is installed (its version.py, as text) and which GPUs
the machine exposes (/dev/nvidiaN, ROCm's KFD topology, the *_VISIBLE_DEVICES variables):
importing torch to ask would cost seconds and is what the UI process must never do. The
engine stays the authority (it still refuses what it cannot run); these checks refuse early
only what is certain to fail.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from llmtop.engine import spec as specs
from llmtop.engine.protocol import MAX_TEMPERATURE

GGUF_MAGIC = b"GGUF"
CPU_TP = (1, 2)   # gloo ranks a CPU offers (docs/tensor-parallel.md)


class CheckError(ValueError):
    """Input that is certain to fail; the message is one line for the user."""


# ---- devices --------------------------------------------------------------------------------

def torch_build() -> tuple[str, str]:
    """("cuda" | "hip" | "cpu", torch version) of the installed torch, without importing it."""
    found = importlib.util.find_spec("torch")
    if found is None or not found.submodule_search_locations:
        raise CheckError("torch is not installed: run ./scripts/setup.sh, or install the torch "
                         "build for this machine (CPU, CUDA or ROCm: README, Install)")
    values: dict[str, Any] = {}
    for folder in found.submodule_search_locations:
        path = Path(folder) / "version.py"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                m = re.match(r"^(__version__|cuda|hip)\s*(?::[^=]*)?=\s*(.+)$", line)
                if m:
                    try:
                        values[m.group(1)] = ast.literal_eval(m.group(2).strip())
                    except (ValueError, SyntaxError):
                        pass
            break
    kind = "hip" if values.get("hip") else "cuda" if values.get("cuda") else "cpu"
    return kind, str(values.get("__version__", "?"))


def _visible(count: int) -> int:
    """`count` GPUs as the *_VISIBLE_DEVICES variables restrict them (as the runtime reads them:
    entries up to the first one that is not a device)."""
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is None:
            continue
        n = 0
        for entry in value.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            n += 1
        count = min(count, n)
    return count


def _rocm_gpus() -> int:
    n = 0
    for props in Path("/sys/class/kfd/kfd/topology/nodes").glob("*/properties"):
        try:
            m = re.search(r"^simd_count\s+(\d+)", props.read_text(), re.M)
        except OSError:
            continue
        n += bool(m and int(m.group(1)) > 0)
    return n


def gpu_count(kind: str) -> int:
    """GPUs this machine exposes to a torch build of `kind`."""
    if kind == "cuda":
        n = sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))
    elif kind == "hip":
        n = _rocm_gpus()
    else:
        return 0
    return _visible(n)


def devices_here() -> str:
    """What --device can name on this machine, in words."""
    kind, version = torch_build()
    n = gpu_count(kind)
    if n == 0:
        why = f"torch {version} is a CPU build" if kind == "cpu" else "no GPU is visible"
        return f"this machine has: cpu ({why})"
    gpus = "cuda:0" if n == 1 else f"cuda:0 .. cuda:{n - 1}"
    return f"this machine has: cpu, cuda ({gpus}{', ROCm' if kind == 'hip' else ''})"


def device(name: str, tp: int = 1) -> str:
    """The device `name` resolves to here ("cpu", "cuda", "cuda:N"); CheckError when it names
    no device of this machine, or asks the CPU for more tensor-parallel ranks than it offers."""
    m = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name or "")
    if m is None:
        raise CheckError(f"unknown device {name!r}: --device takes auto, cpu, cuda or cuda:N; "
                         f"{devices_here()}")
    kind, _ = torch_build()
    n = gpu_count(kind)
    resolved = name
    if name == "auto":
        resolved = "cuda" if n else "cpu"
    elif name.startswith("cuda"):
        if n == 0:
            raise CheckError(f"--device {name}: {devices_here()}")
        if m.group(1) is not None and int(m.group(1)) >= n:
            raise CheckError(f"--device {name}: {devices_here()}")
    if resolved == "cpu" and tp > max(CPU_TP):   # below 1 is each command's own message
        raise CheckError(f"--tp {tp} on the CPU: a CPU offers --tp 1 or 2 (gloo ranks); "
                         f"{devices_here()}")
    return resolved


# ---- the model ------------------------------------------------------------------------------

def model_file(model: str) -> None:
    """A .gguf file must start with the GGUF magic bytes."""
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckError(f"{model}: cannot be read ({e.strerror or e})") from None
    if head != GGUF_MAGIC:
        raise CheckError(f"{model} is not a GGUF file (it does not start with the GGUF magic "
                         f"bytes); --model takes a .gguf file, a Hugging Face folder, embedded "
                         f"or synthetic:<shape>")


def _config(model: str) -> dict[str, Any] | None:
    """The model's config.json as a dict (a synthetic shape's fields), or None if unknown
    without loading it (a GGUF file, the embedded model before its first conversion)."""
    s = specs.resolve(model)
    if s.kind == "synthetic":
        return dict(specs.SYNTHETIC_SHAPES[s.path])
    folder = Path(s.path)
    if s.kind == "hub":
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home()
                   / ".cache" / "huggingface") / "hub")
        snaps = sorted((hub / ("models--" + s.path.replace("/", "--")) / "snapshots").glob("*"))
        folder = snaps[-1] if snaps else folder
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _prompt_tokens(model: str, text: str) -> int | None:
    """Tokens of `text` by the model's tokenizer.json (the `tokenizers` library, no torch)."""
    s = specs.resolve(model)
    path = Path(s.path) / "tokenizer.json"
    if s.kind not in ("embedded", "hf_dir") or not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    return len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=True).ids)


def prompt_fits(model: str, prompt_len: int | None, prompt: str | None, new_tokens: int) -> None:
    """Refuses a prompt that, with the new tokens, cannot fit the model's context (the
    config's max_position_embeddings); passes when either is unknown without loading."""
    cfg = _config(model)
    limit = (cfg or {}).get("max_position_embeddings")
    if not isinstance(limit, int):
        return
    n = prompt_len if prompt_len is not None else _prompt_tokens(model, prompt) if prompt else None
    if n is not None and n + new_tokens > limit:
        raise CheckError(f"prompt of {n} tokens + {new_tokens} new tokens exceeds the model's "
                         f"context of {limit}")


def sampling(temperature: float, top_p: float, top_k: int) -> None:
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise CheckError(f"--temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if not 0 < top_p <= 1:
        raise CheckError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise CheckError(f"--top-k must be 0 (off) or more, got {top_k}")


# ---- output files ---------------------------------------------------------------------------

def output_file(path: str | None, flag: str = "--json") -> None:
    """An output file must be writable before anything is measured: its folder exists and is
    a folder, and the file (if there) is a writable file."""
    if not path:
        return
    p = Path(path).expanduser()
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise CheckError(f"{flag} {path} is a folder; give a file name")
    if not folder.is_dir():
        raise CheckError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CheckError(f"{flag} {path}: not writable here")


def save_record(record: dict[str, Any], path: str) -> str:
    """Writes the run record to `path`; if that fails after all, to the session cache, so a
    measured run is never lost to an output error. Returns the line to show."""
    text = json.dumps(record, indent=1)
    try:
        Path(path).expanduser().write_text(text)
        return f"record written to {path}"
    except OSError as e:
        why = e.strerror or str(e)
    spare = specs.cache_dir() / "sessions" / time.strftime("run-%Y%m%d-%H%M%S.json")
    spare.parent.mkdir(parents=True, exist_ok=True)
    spare.write_text(text)
    return f"llmtop: cannot write {path} ({why}); the record is kept in {spare}"


# ---- what a file is -------------------------------------------------------------------------

KIND_WORDS = {"run": "a run record (llmtop run --json)",
              "bench": "a bench result (bench.json, points.jsonl or a bench folder)",
              "session": "a dashboard session (the JSONL the dashboard records)"}
_SCHEMAS = (("llmtop.run/", "run"), ("llmtop.bench/", "bench"), ("llmtop.session/", "session"))
_BENCH_LINES = ("plan", "meta", "point", "note")   # the record types of a points.jsonl


def file_kind(path: str) -> str:
    """"run", "bench" or "session" for one of llmtop's files, from its first record (a
    JSONL's first line, or the whole JSON document); "" for anything else."""
    p = Path(path)
    if p.is_dir():
        return "bench" if (p / "points.jsonl").exists() or (p / "bench.json").exists() else ""
    try:
        with open(p, "rb") as f:
            head = f.readline(1 << 20)
            first = _json(head)
            if not isinstance(first, dict):
                first = _json(head + f.read())
    except OSError:
        return ""
    if not isinstance(first, dict):
        return ""
    schema = str(first.get("schema", ""))
    for prefix, kind in _SCHEMAS:
        if schema.startswith(prefix):
            return kind
    return "bench" if first.get("type") in _BENCH_LINES else ""


def _json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def replay_file(path: str) -> None:
    """`llmtop replay` takes a session: a missing file, a folder or another of llmtop's files
    is named for what it is."""
    takes = ("replay takes a session file the dashboard recorded (~/.cache/llmtop/sessions/, "
             "or the dashboard's --record FILE)")
    p = Path(path)
    if not p.exists():
        raise CheckError(f"no such file: {path}; {takes}")
    if p.is_dir():
        raise CheckError(f"{path} is a folder; {takes}")
    kind = file_kind(path)
    if kind in ("run", "bench"):
        raise CheckError(f"{path} is {KIND_WORDS[kind]}, not a session; {takes} "
                         f"(`llmtop compare` reads two {kind} files)")
