"""The messages between the UI (or CLI) process and the engine process.

Both sides import this module and nothing else of each other. Messages are dataclasses of
builtins; on the wire they travel as plain dicts tagged with their type and the protocol
version, so no torch object (or any class the other side lacks) is ever pickled across.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Fields added with a default keep the version: every older message (and recorded session
# line) still decodes. A renamed or removed field, or a changed meaning, bumps it.
PROTOCOL_VERSION = 1

PHASES = ("starting", "loading", "compiling", "capturing", "tuning", "warming", "ready",
          "generating", "error")


# ---- commands: client -> engine -------------------------------------------------------------

@dataclass
class Configure:
    """Load (or reconfigure) the model. `opts` maps catalogue axes to option names."""

    model: str = "embedded"
    device: str = "cpu"
    dtype: str = "bf16"
    opts: dict[str, str] = field(default_factory=dict)
    tp: int = 1
    # the ranks' GPUs, rank 0 first, numbered as nvidia-smi and the GPU panel number them;
    # None: llmtop chooses (the best-linked set of the visible GPUs, profilers/gpu_set.py)
    gpus: list[int] | None = None


# The highest sampling temperature any backend takes: vLLM's SamplingParams raises above 2,
# so every backend refuses it up front (a row of one backend must be possible on the others).
MAX_TEMPERATURE = 2.0


@dataclass
class Generate:
    """One run. Exactly one of `prompt`, `messages` or `prompt_len` says what goes in."""

    run_id: int = 0
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt_len: int | None = None
    batch: int = 1
    max_new_tokens: int = 64
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    seed: int = 0
    ignore_eos: bool = False
    profile_steps: int = 0   # > 0: profile the prefill and this many decode steps


@dataclass
class Stop:
    """Ends the current run early; the tokens so far still make a record."""


@dataclass
class Shutdown:
    """Asks the engine to exit."""


# ---- events: engine -> client ---------------------------------------------------------------

@dataclass
class Status:
    phase: str
    detail: str = ""
    progress: float | None = None  # 0..1 when known
    elapsed_s: float | None = None


@dataclass
class ModelInfo:
    """The loaded model's shape; `kv_bytes_per_token` is computed by the engine (engine/models.py)
    with the model's real head_dim, so nobody else derives it."""

    name: str
    params: int
    weight_bytes: int
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    vocab: int
    dtype: str
    device: str
    synthetic: bool
    source: str = ""
    tp: int = 1                                       # tensor-parallel ranks
    devices: list[str] = field(default_factory=list)  # each rank's device, rank 0 first
    gpus: list[int] = field(default_factory=list)     # the same GPUs as nvidia-smi numbers them
    gpu_choice: str = ""                              # why those GPUs (named, recommended, ...)
    kv_bytes_per_token: int = 0   # K+V bytes one token adds, all layers (0: an old recording)


@dataclass
class DeviceInfo:
    """The device the engine runs on: its measured ceilings and what can run there.

    `options` maps axis -> option -> {"ok": bool, "reason": str}: the UI (which has no torch)
    greys out what cannot run and shows why.
    """

    device: str
    name: str
    mem_bw_gb_s: float
    peak_tflops: float
    options: dict[str, dict[str, dict[str, Any]]]
    gpu_count: int = 0   # GPUs torch sees (after CUDA_VISIBLE_DEVICES): the most TP ranks here
    threads: int = 0        # the engine's CPU threads for torch ops (0: not reported)
    cpus: int = 0           # CPUs the engine may run on
    threads_note: str = ""  # why threads differs from torch's default (engine/threads.py)


@dataclass
class ConfigApplied:
    """What the engine runs with now, and how it got there (in place, reloaded, recompiled).

    `config.opts` is the full axis -> option map, the catalogue's defaults merged by the engine.
    """

    config: Configure
    how: str
    seconds: float


@dataclass
class RunStarted:
    run_id: int
    prompts: list[str]
    prompt_tokens: int
    batch: int
    max_new_tokens: int
    t_start_ns: int


@dataclass
class Token:
    """One decode step: the token of every request in the batch, stamped once on the host."""

    run_id: int
    index: int
    ids: list[int]
    texts: list[str]
    t_ns: int


@dataclass
class RunDone:
    run_id: int
    record: dict[str, Any]


@dataclass
class EngineEvent:
    """Something that explains speed (recompile, graph capture, tuning), for trace markers.

    For a stall (kinds in STALLS) `t_ns` is when it started and `duration_ms` how long it took.
    """

    kind: str
    detail: str
    t_ns: int
    duration_ms: float | None = None


STALLS = ("compile", "recompile", "capture", "tuning")


@dataclass
class ServerMetrics:
    """One reading of an attached server's Prometheus /metrics (engine/endpoint/prom.py's
    gauges: running, waiting, kv_cache_usage, batch_size...), stamped on arrival here."""

    t_ns: int
    values: dict[str, float]


@dataclass
class StepProfile:
    """What bounds a step: top kernels by device time and the device's busy/idle split.

    Times are per step (prefill included) over the profiled window; `trace_path` is a Chrome
    trace that Perfetto or chrome://tracing opens.
    """

    run_id: int
    steps: int
    device: str                        # gpu | cpu (on a CPU, busy = time inside ATen ops)
    step_ms: float
    busy_ms: float
    idle_ms: float
    top_kernels: list[dict[str, Any]]  # name, calls, device_ms, pct
    trace_path: str
    # tensor parallelism: time per decode step inside the ranks' collectives (NCCL kernels on a
    # GPU, gloo's all-reduce / all-gather work on a CPU) and its share of the decode steps
    tp: int = 1
    collective_ms: float = 0.0
    collective_pct: float = 0.0
    collective_calls: int = 0          # collectives in the whole window
    # host ops by their own CPU time (name, calls, cpu_ms, pct): where an idle GPU's time goes
    top_host_ops: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GuardResult:
    """The correctness guard: greedy ids of a check prompt against the baseline configuration.

    identical: the same ids. equivalent: ids differ only where the baseline's top-1 margin is
    within what the dtype's rounding can flip (engine/guard.py tolerance). diverged: a flip
    rounding cannot explain; the only state that is an alarm.
    """

    status: str                    # identical | equivalent | diverged
    diverged_at: int | None        # first differing token index (also for equivalent)
    max_logit_diff: float | None   # at that token (or over all tokens when identical)
    tokens: int
    baseline: str
    margin: float | None = None          # baseline's top-1 margin at the first differing token
    tolerance: float | None = None       # the flip threshold there (dtype eps x logit scale)
    logit_distance: float | None = None  # largest |logit difference| over the compared steps
    beyond_at: int | None = None         # first token flipped beyond tolerance (diverged only)


class ErrorKind(str, enum.Enum):
    """What went wrong; the values are the strings the wire (and old recordings) carry."""

    CONFIG = "config"                  # the configuration cannot run (here)
    BAD_REQUEST = "bad_request"        # the request cannot run (prompt too long, no tokenizer)
    OOM = "oom"                        # out of memory; the tokens so far still make a record
    RUNTIME = "runtime"                # a kernel failed mid-run; the same
    ENGINE_DEAD = "engine_dead"        # the engine process is gone
    INTERNAL = "internal"              # a bug in the engine (its traceback is in engine.log)
    PROTOCOL = "protocol"              # a message the engine could not read
    NOT_CONFIGURED = "not_configured"  # a run was asked of an engine with no configuration
    STALLED = "stalled"                # no word from the engine for too long (the owner's verdict)

    def __str__(self) -> str:
        return self.value

    @property
    def fatal(self) -> bool:
        """The run (or configuration) cannot go on: no record follows. An oom or a runtime error
        mid-run is not fatal: the engine still sends the record of the tokens measured."""
        return self not in (ErrorKind.OOM, ErrorKind.RUNTIME)

    @property
    def pausing(self) -> bool:
        """The dashboard stops running on its own until the user acts (retrying would only fail
        again the same way)."""
        return self in (ErrorKind.OOM, ErrorKind.RUNTIME, ErrorKind.BAD_REQUEST,
                        ErrorKind.INTERNAL)


@dataclass
class Error:
    kind: ErrorKind
    message: str
    recoverable: bool = True

    def __post_init__(self) -> None:
        self.kind = ErrorKind(self.kind)   # Error("oom", ...) is an ErrorKind too; unknown: ValueError


COMMANDS = (Configure, Generate, Stop, Shutdown)
EVENTS = (Status, ModelInfo, DeviceInfo, ConfigApplied, RunStarted, Token, RunDone, EngineEvent, StepProfile, GuardResult,
          ServerMetrics, Error)
_TYPES = {cls.__name__: cls for cls in COMMANDS + EVENTS}


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in pairs}


def encode(message: Any) -> dict[str, Any]:
    """A message as a plain dict of builtins (enums as their values), ready for any pipe or
    JSON line."""
    data = dataclasses.asdict(message, dict_factory=_plain)
    data["type"] = type(message).__name__
    data["v"] = PROTOCOL_VERSION
    return data


def decode(data: dict[str, Any]) -> Any:
    """The message a dict from `encode` stands for; unknown versions or types raise ValueError.

    Fields typed as a dataclass or an enum are rebuilt as one, at any depth, so a consumer reads
    `ev.config.tp`, never a dict.
    """
    data = dict(data)
    version = data.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ValueError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    name = data.pop("type", None)
    cls = _TYPES.get(name)
    if cls is None:
        raise ValueError(f"unknown message type {name!r}")
    return _build(cls, data)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = _hints(cls)
    return cls(**{k: _value(hints.get(k, Any), v) for k, v in data.items()})


def _value(hint: Any, value: Any) -> Any:
    """`value` as the type `hint` names: a dataclass, an enum, or either inside X | None."""
    if value is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(inner[0], value) if len(inner) == 1 else value
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            return _build(hint, value)
        if issubclass(hint, enum.Enum):
            return hint(value)
    return value
