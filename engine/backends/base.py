"""What an engine backend is: one way of running a loaded model behind one small interface.

The runner picks one backend per configuration and holds no backend branches: loading the
model, the guard, the stamps, the record and the events are the runner's; how the tokens are
computed is the backend's. A backend that compiles or captures does it in its constructor (at
configure time, each step an EngineEvent with its duration), never inside a measured run.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..generate import Inputs, Sampling, Step
from ..guard import Trace

Emit = Callable[[Any], None]


class Backend(abc.ABC):
    name: ClassVar[str]   # the option of the `backend` axis: hf | vllm | native
    # True: the backend runs its own tensor parallelism in one engine process (vLLM), so the
    # runner loads one unsharded copy and starts no follower ranks
    own_tensor_parallel: ClassVar[bool] = False

    @classmethod
    def check_model(cls, spec: Any) -> None:
        """Raises OptionError (one line) for a model this backend cannot run, before anything
        loads; every model by default."""

    def __init__(self, loaded: Any, opts: dict[str, str], emit: Emit, tp: int = 1) -> None:
        """How the runner builds every backend, for one configuration (`opts`, the full axis
        map) of a loaded model (engine/models.Loaded) with `tp` ranks: anything slow (compile,
        capture, starting another engine) happens here, at configure time."""

    @abc.abstractmethod
    def generate_steps(self, inputs: Inputs, max_new_tokens: int, sampling: Sampling,
                       eos_ids: set[int], ignore_eos: bool,
                       should_stop: Callable[[], bool]) -> Iterator[Step]:
        """One Step per generated position, stamped with perf_counter_ns right after its ids
        reached the host (that read waits for the device, so the stamp is honest)."""

    @abc.abstractmethod
    def trace(self, inputs: Inputs, tokens: int, forced: Sequence[int] | None = None) -> Trace:
        """Greedy ids of the guard's check prompt, with each step's last-position logits
        (float32, on the host), the dtype's epsilon and the layer count where the backend has
        them; `forced`: ids to feed back instead of its own choices, where it can."""

    def warm(self, batch: int, prompt_tokens: int, max_new_tokens: int) -> None:
        """Compiles or captures whatever a run of this shape needs and has not met yet, before
        the runner starts its clock: nothing compiles inside a measured run."""

    def apply(self, opts: dict[str, str]) -> None:
        """Options that change in place (no rebuild); the optimization units say which."""

    def takes_in_place(self, opts: dict[str, str]) -> bool:
        """Whether `apply(opts)` can take this configuration without a new backend (beyond
        what the units' reload flags already rebuild): True unless a backend says otherwise."""
        return True

    def run_info(self) -> dict[str, Any]:
        """Facts of the last run for its record (e.g. KV bytes reserved and used)."""
        return {}

    def close(self) -> None:
        """Frees what the backend holds on the device."""
