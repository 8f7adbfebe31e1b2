"""A sweep's results file, DIR/points.jsonl: one JSON record a line (plan, meta, note, point).

Each finished point is appended at once, flushed and synced, so an interrupted sweep keeps what
it measured and `--resume` continues it without measuring a point twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from llmtop.bench_plan import FINAL, BenchError, Plan

def read_lines(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The JSONL's records up to the first damaged line, and a one-line note about the damage.

    A sweep killed mid-write leaves at most a cut last line: it is ignored (and rewritten by
    the next append, which starts on a fresh line)."""
    out: list[dict[str, Any]] = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out, None
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}") from None
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or "type" not in rec:
                raise ValueError("not a record")
        except ValueError:
            last = n == len(lines) or all(not rest.strip() for rest in lines[n:])
            if last:
                return out, f"{path}: line {n} was cut short (an interrupted write); ignored"
            raise BenchError(f"{path}: line {n} is not a bench record; the file is damaged "
                             f"(move it away or fix that line)") from None
        out.append(rec)
    return out, None


class PointStore:
    """Appends records to points.jsonl, each line flushed and synced before the next point."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # a line cut by a killed sweep: drop it, the point it began is measured again
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":"), allow_nan=False,
                                 default=_nan_free) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _nan_free(obj: Any) -> Any:
    return str(obj)


def clean(value: Any) -> Any:
    """NaN and infinities as None, so every file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def saved_plan(records: list[dict[str, Any]]) -> Plan | None:
    plans = [r for r in records if r["type"] == "plan"]
    if not plans:
        return None
    data = plans[-1]["plan"]
    known = {f for f in Plan.__dataclass_fields__}
    return Plan(**{k: v for k, v in data.items() if k in known})


def done_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if r["type"] == "point" and r.get("status") in FINAL}



def iter_points(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The last record of each point key (a resumed error point is replaced by its retry)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "point":
            latest[r["key"]] = r
    return iter(latest.values())
