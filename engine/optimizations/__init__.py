"""One module per optimization axis: everything llmtop knows about it, in one place.

A unit is a module here with `AXIS` (an `Axis`: options, default and why, help for every
option, whether a change reloads the model, its place in the order, its value in each preset),
`conflicts(opts)` (why a combination cannot run, whatever the machine) and
`availability(here)` (whether each option runs on this device, with a one-line reason). How an
option is applied belongs to the backend that applies it, from the unit's tables. Importing a
unit imports no torch: engine/catalogue.py, which the UI reads, is built from them. Adding an
axis is one new module here (and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Axis:
    name: str
    order: float                      # place in every list (CLI, panel, tables, reports)
    help: str                         # the axis, one line
    options: dict[str, str]           # option -> one line of help, in display order
    default: str
    why_default: str                  # why the default is what it is, one line
    reload: bool = False              # a change reloads the model (else it applies in place)
    presets: dict[str, str] = field(default_factory=dict)   # preset name -> this axis' option

    def __post_init__(self) -> None:
        missing = [name for name, text in self.options.items() if not text.strip()]
        if missing or not self.help.strip() or not self.why_default.strip():
            raise ValueError(f"{self.name}: no help for {', '.join(missing) or 'the axis'}")
        if self.default not in self.options:
            raise ValueError(f"{self.name}: default {self.default!r} is not an option")
        for preset, value in self.presets.items():
            if value not in self.options:
                raise ValueError(f"{self.name}: preset {preset} names no option {value!r}")


@dataclass
class Availability:
    ok: bool
    reason: str = ""   # why not (or a caveat when ok)


@dataclass(frozen=True)
class Here:
    """The device availability is asked for, as the units need it (built with torch, by the
    catalogue's `availability`)."""

    device: str
    cuda: bool      # a CUDA or ROCm GPU is visible and asked for
    rocm: bool

    @property
    def no_gpu(self) -> str:
        return ("needs a CUDA or ROCm GPU" if not self.device.startswith("cuda")
                else "no GPU visible to torch")
