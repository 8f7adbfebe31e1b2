"""Which GPUs the tensor-parallel ranks run on: the ones the user named, or the best-linked set.

Two numberings meet here. The telemetry backend (NVML, amdsmi) numbers every GPU of the
machine, as `nvidia-smi` and llmtop's GPU panel do; torch numbers only the GPUs
CUDA_VISIBLE_DEVICES leaves it, in the order that variable (and CUDA_DEVICE_ORDER) gives. Users
read GPU numbers off the panel or `nvidia-smi topo -m`, and the recommender reasons over the
backend's link matrix, so `--gpus` speaks the backend's numbers and this module translates them
into torch's `cuda:K`:

1. by UUID: torch reports each visible device's UUID, the backend each GPU's; equal UUIDs are
   the same card whatever the variables say;
2. where torch gives no UUID, by CUDA_VISIBLE_DEVICES: unset means cuda:K is GPU K; a list of
   numbers means cuda:K is the K-th number; a list of UUID prefixes (GPU-...) is matched to the
   backend's UUIDs;
3. with no telemetry backend at all (no NVML or amdsmi), `--gpus` numbers are torch's own.

Pure Python (no torch): the engine gathers torch's side and calls `choose`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gpu import GpuStatic
from .topology import TopologyMatrix, recommend


class GpuSetError(ValueError):
    """A GPU set that cannot run; the message is one line for the user."""


@dataclass
class GpuSet:
    """Where each rank runs, rank 0 first."""

    gpus: list[int]       # the backend's (nvidia-smi's) indices; torch's when there is no backend
    ordinals: list[int]   # torch's cuda:K of each rank
    how: str              # named | recommended | in order
    why: str              # one line: why this set (shown in the UI and the run record)

    @property
    def devices(self) -> list[str]:
        return [f"cuda:{k}" for k in self.ordinals]


def parse_gpus(text: str) -> list[int]:
    """`--gpus 0,1` as [0, 1]; one-line GpuSetError for anything that is not such a list."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise GpuSetError(f"--gpus {text}: give GPU numbers separated by commas, e.g. --gpus 0,1")
    return [int(p) for p in parts]


def check_named(named: list[int], tp: int) -> None:
    """What can be refused without looking at the machine: count and duplicates."""
    shown = ",".join(str(g) for g in named)
    if len(named) != tp:
        raise GpuSetError(f"--gpus {shown} names {len(named)} GPU{'s' if len(named) != 1 else ''} "
                          f"for --tp {tp}: name exactly one GPU per rank")
    twice = next((g for g in named if named.count(g) > 1), None)
    if twice is not None:
        raise GpuSetError(f"--gpus {shown} names GPU {twice} twice: each rank needs its own GPU")
    if any(g < 0 for g in named):
        raise GpuSetError(f"--gpus {shown}: GPU numbers start at 0")


def _norm_uuid(uuid: str | None) -> str | None:
    """"GPU-58f8c6a4-..." (NVML) and "58f8c6a4-..." (torch) as one form."""
    if not uuid:
        return None
    text = str(uuid).strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def visible_map(devices: list[GpuStatic], cuda_uuids: list[str | None],
                visible_env: str | None) -> dict[int, int]:
    """Backend index -> torch ordinal for every GPU torch sees (rules 1 and 2 of the module)."""
    by_uuid = {_norm_uuid(d.uuid): d.index for d in devices if _norm_uuid(d.uuid)}
    mine = [_norm_uuid(u) for u in cuda_uuids]
    if mine and all(u in by_uuid for u in mine):
        return {by_uuid[u]: k for k, u in enumerate(mine)}
    known = {d.index for d in devices}
    if visible_env is None:
        return {k: k for k in range(len(cuda_uuids)) if k in known}
    entries = [e.strip() for e in visible_env.split(",") if e.strip()]
    out: dict[int, int] = {}
    for k, entry in enumerate(entries[:len(cuda_uuids)]):
        if entry.isdigit():
            index = int(entry)
        else:
            prefix = _norm_uuid(entry)
            hits = [i for u, i in by_uuid.items() if prefix and u.startswith(prefix)]
            if len(hits) != 1:
                raise GpuSetError(f"cannot tell which GPU CUDA_VISIBLE_DEVICES entry {entry!r} is")
            index = hits[0]
        if index in known:
            out[index] = k
    return out


def _sub_matrix(matrix: TopologyMatrix, keep: list[int]) -> TopologyMatrix:
    rows = [[matrix.link(i, j) for j in keep] for i in keep]
    return TopologyMatrix(source=matrix.source, indices=list(keep), links=rows)


def choose(tp: int, named: list[int] | None, devices: list[GpuStatic],
           matrix: TopologyMatrix | None, cuda_uuids: list[str | None],
           visible_env: str | None) -> GpuSet:
    """The ranks' GPUs: `named` (backend indices, rank order) checked, else the set the link
    matrix recommends among the GPUs torch can see.

    `cuda_uuids` has one entry per torch ordinal (None where torch gave no UUID);
    `visible_env` is CUDA_VISIBLE_DEVICES as set (None when unset). Raises GpuSetError.
    """
    visible = len(cuda_uuids)
    if named is not None:
        check_named(named, tp)
    if tp > visible:
        raise GpuSetError(f"--tp {tp} needs {tp} GPUs, but torch sees {visible}"
                          + (f" (CUDA_VISIBLE_DEVICES={visible_env})" if visible_env is not None
                             else ""))
    if not devices:  # no telemetry backend: torch's numbers are the only ones there are
        if named is not None:
            bad = next((g for g in named if g >= visible), None)
            if bad is not None:
                raise GpuSetError(f"--gpus: no GPU {bad} here (torch sees cuda:0..cuda:{visible - 1})")
            return GpuSet(list(named), list(named), "named", "named with --gpus (torch's numbers: "
                          "no GPU telemetry to read the machine's)")
        first = list(range(tp))
        return GpuSet(first, first, "in order", "the first GPUs in torch's order (no GPU "
                      "telemetry, so no link matrix to choose from)")
    mapping = visible_map(devices, cuda_uuids, visible_env)
    if named is not None:
        known = sorted(d.index for d in devices)
        for g in named:
            if g not in known:
                raise GpuSetError(f"--gpus: no GPU {g} here (GPUs {_span(known)})")
            if g not in mapping:
                env = f"CUDA_VISIBLE_DEVICES={visible_env}" if visible_env is not None else "torch"
                raise GpuSetError(f"--gpus: GPU {g} is hidden from torch by {env}; torch sees "
                                  f"GPU{'s' if len(mapping) != 1 else ''} {_span(sorted(mapping))}")
        return GpuSet(list(named), [mapping[g] for g in named], "named", "named with --gpus")
    usable = sorted(mapping)
    if len(usable) < tp:
        raise GpuSetError(f"--tp {tp} needs {tp} GPUs, but only {len(usable)} of torch's are "
                          "known to the GPU telemetry")
    if matrix is None or not matrix.indices or any(g not in matrix.indices for g in usable):
        group = usable[:tp]
        return GpuSet(group, [mapping[g] for g in group], "in order",
                      "the first visible GPUs (no link matrix to choose from)")
    rec = recommend(_sub_matrix(matrix, usable), tp)
    group = rec.gpus
    links = sorted({matrix.link(a, b).label for a in group for b in group if a != b})
    why = "recommended by the link matrix" + (f" ({'/'.join(links)})" if links else "") + (
        f", {rec.degraded}" if rec.degraded else "")
    return GpuSet(group, [mapping[g] for g in group], "recommended", why)


def _span(indices: list[int]) -> str:
    if not indices:
        return "none"
    if indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 2:
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(str(i) for i in indices)
