"""gemm: PyTorch TunableOp, which times the BLAS libraries' GEMM solutions and keeps the best."""

from __future__ import annotations

from . import Availability, Axis, Here

AXIS = Axis(
    name="gemm", order=3, help="GEMM tuning",
    options={"default": "the BLAS library's own choice",
             "tunableop": "PyTorch TunableOp: each GEMM shape tuned once, then reused"},
    default="default",
    why_default="tuning costs seconds per new GEMM shape, and gains nothing on CUDA",
    presets={"baseline": "default", "study": "tunableop", "max": "default"},
)


def conflicts(opts: dict[str, str]) -> str | None:
    return None


def availability(here: Here) -> dict[str, Availability]:
    if not here.cuda:
        tunable = Availability(False, f"TunableOp {here.no_gpu}")
    elif here.rocm:
        tunable = Availability(True, "tunes over rocBLAS and hipBLASLt solutions")
    else:
        tunable = Availability(
            True, "on CUDA only cuBLAS's default solution exists: no gain (TPOT 0.44-0.8x on an H200)")
    return {"default": Availability(True), "tunableop": tunable}
