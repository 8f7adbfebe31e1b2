"""GPU telemetry in a sweep: the profilers' Sampler (on a stub backend: this machine has no GPU)
gives each point its mean power and energy per generated token, and the reports show them."""

from __future__ import annotations

import json
import math
import time

import pytest

from .conftest import stamps_ttft_tpot

gpu = pytest.importorskip("llmtop.profilers.gpu")


class StubGpu:
    """One GPU drawing a steady 250 W."""

    name = "stub"

    def devices(self):
        return [gpu.GpuStatic(index=0, name="Stub GPU", vendor="none", memory_total=80 << 30)]

    def sample(self, pid=None):
        return [gpu.GpuSample(t_ns=time.perf_counter_ns(), index=0, power_w=250.0)]

    def describe(self):
        return {"stub": "1.0"}

    def close(self):
        pass


def test_sweep_records_power_and_energy_per_token(tmp_path, monkeypatch, capsys):
    from llmtop.cli import main

    monkeypatch.setattr(gpu, "detect_backend", lambda: StubGpu())
    out = tmp_path / "tele"
    code = main(["bench", "--model", "synthetic:tiny", "--device", "cpu", "--batch", "2", "--prompt-len", "16",
                 "--max-new-tokens", "40", "--repeat", "1", "--warmup", "0", "--preset", "baseline",
                 "--out", str(out), "--no-plots"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "bench.json").read_text())
    assert data["telemetry"]["available"] is True and data["telemetry"]["backend"] == "stub"
    assert data["telemetry"]["devices"][0]["name"] == "Stub GPU"
    (point,) = data["points"]
    (run,) = point["runs"]
    tele = run["telemetry"]
    assert tele["available"] and tele["mean_power_w"] == 250.0 and tele["samples"] >= 1
    seconds = (run["t_ns"][-1] - run["start_ns"]) / 1e9      # the run, from its own stamps
    assert math.isclose(tele["energy_j"], 250.0 * seconds, rel_tol=1e-9)
    assert math.isclose(point["energy_j_per_token"], 250.0 * seconds / (2 * 40), rel_tol=1e-9)
    assert point["mean_power_w"] == 250.0
    assert math.isclose(point["ttft_ms"], stamps_ttft_tpot(run)[0], rel_tol=1e-9)
    md = (out / "report.md").read_text()
    assert "telemetry: stub power sampled at 10 Hz: mean 250 W" in md
    assert f"| 250 | {point['energy_j_per_token']:.3f} |" in md
