"""The one list of optimizations, read from the units in engine/optimizations/ (one per axis).

CLI flags, TUI toggles, bench and JSON records all use these names, in this order. Names,
help, presets and combination rules are pure Python; `availability()` imports torch lazily
because only the engine side asks it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from . import optimizations
from .optimizations import Availability, Axis, Here


def _units() -> list[ModuleType]:
    found = [importlib.import_module(f"{optimizations.__name__}.{m.name}")
             for m in pkgutil.iter_modules(optimizations.__path__)]
    return sorted(found, key=lambda unit: unit.AXIS.order)


UNITS: list[ModuleType] = _units()
AXIS_INFO: dict[str, Axis] = {unit.AXIS.name: unit.AXIS for unit in UNITS}
AXES: dict[str, tuple[str, ...]] = {name: tuple(a.options) for name, a in AXIS_INFO.items()}
DEFAULTS: dict[str, str] = {name: a.default for name, a in AXIS_INFO.items()}
HELP: dict[str, str] = {name: a.help for name, a in AXIS_INFO.items()}
OPTION_HELP: dict[str, dict[str, str]] = {name: dict(a.options) for name, a in AXIS_INFO.items()}
RELOAD: tuple[str, ...] = tuple(name for name, a in AXIS_INFO.items() if a.reload)
PRESETS: dict[str, dict[str, str]] = {}
for _axis in AXIS_INFO.values():
    for _preset, _value in _axis.presets.items():
        PRESETS.setdefault(_preset, {})[_axis.name] = _value
# what each preset is for (the units give their values, this says why the set exists)
PRESET_HELP = {
    "baseline": "transformers as it comes: the study's starting point",
    "study": "the study's stack: FlashAttention-2 kernel, per-layer compile, TunableOp GEMMs",
    "max": "the fastest transformers path we know: static cache + CUDA graphs",
}


class OptionError(ValueError):
    """An unknown, unavailable or incompatible option; the message is one line."""


def parse_opts(pairs: list[str], preset: str | None = None) -> dict[str, str]:
    """`["attention=sdpa", "kv=static,compile=full", ...]` (after an optional preset) as a full
    axis -> option map: `llmtop --opt` takes the comma form as `llmtop bench --opt` does."""
    opts = dict(DEFAULTS)
    if preset:
        if preset not in PRESETS:
            raise OptionError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        opts.update(PRESETS[preset])
    for pair in (p for item in pairs for p in item.split(",") if p):
        axis, sep, value = pair.partition("=")
        if not sep:
            raise OptionError(f"--opt takes AXIS=VALUE, got {pair!r}")
        if axis not in AXES:
            raise OptionError(f"unknown axis {axis!r}; axes: {', '.join(AXES)}")
        if value not in AXES[axis]:
            raise OptionError(f"unknown {axis} option {value!r}; options: {', '.join(AXES[axis])}")
        opts[axis] = value
    return opts


def conflicts(opts: dict[str, str]) -> str | None:
    """Why a combination cannot run, whatever the machine; None when it can."""
    for unit in UNITS:
        why = unit.conflicts(opts)
        if why:
            return why
    return None


def availability(device: str) -> dict[str, dict[str, Availability]]:
    """Whether each option can run on `device` here, with a one-line reason."""
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    here = Here(device, cuda, cuda and torch.version.hip is not None)
    return {unit.AXIS.name: unit.availability(here) for unit in UNITS}


def check(opts: dict[str, str], device: str) -> None:
    """Raises OptionError (one line) if `opts` cannot run on `device`."""
    why = conflicts(opts)
    if why:
        raise OptionError(why)
    table = availability(device)
    for axis, value in opts.items():
        a = table.get(axis, {}).get(value)
        if a is not None and not a.ok:
            raise OptionError(f"{axis}={value} is unavailable here: {a.reason}")


def as_dict(table: dict[str, dict[str, Availability]]) -> dict[str, Any]:
    return {axis: {name: {"ok": a.ok, "reason": a.reason} for name, a in opts.items()}
            for axis, opts in table.items()}
