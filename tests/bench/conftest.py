"""Helpers for the bench, compare and session tests: the real `llmtop` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

LLMTOP = [sys.executable, "-m", "llmtop"]

# a sweep small enough for a 2-core CI machine: synthetic:tiny builds in well under a second
TINY = ["--model", "synthetic:tiny", "--device", "cpu", "--no-telemetry"]


def llmtop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMTOP, *args], capture_output=True, text=True, timeout=timeout)


def point_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "point":
            out.append(rec)
    return out


def stamps_ttft_tpot(run: dict[str, Any]) -> tuple[float, float]:
    """TTFT and TPOT of one run, recomputed from its raw stamps (DESIGN.md's definitions)."""
    t = run["t_ns"]
    ttft = (t[0] - run["start_ns"]) / 1e6
    tpot = (t[-1] - t[0]) / 1e6 / (len(t) - 1) if len(t) > 1 else 0.0
    return ttft, tpot
