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


def test_power_is_charged_to_the_gpus_the_engine_placed_its_ranks_on():
    """The engine's record names its ranks' GPUs as the telemetry numbers them (model.gpus):
    a tp=2 run the engine placed on GPUs 2 and 3 (torch's cuda:0 and cuda:1 under
    CUDA_VISIBLE_DEVICES=2,3) is charged with GPUs 2 and 3, not 0 and 1."""
    from llmtop.bench_plan import Plan, rank_gpus
    from llmtop.bench_telemetry import telemetry_gpus

    placed = {"model": {"tp": 2, "devices": ["cuda:0", "cuda:1"], "gpus": [2, 3]}}
    assert telemetry_gpus(placed, "cuda", 2) == [2, 3]
    # an engine that could not tell (no telemetry library): torch's ordinals from the device
    assert telemetry_gpus({"model": {"gpus": []}}, "cuda:1", 2) == [1, 2]
    assert telemetry_gpus({"model": {}}, "cpu", 2) is None
    # --gpus 3,1,0: a tp=2 point runs on the first two named, tp=1 on the first
    plan = Plan(gpus=[3, 1, 0], tps=[1, 2])
    assert rank_gpus(plan, 2) == [3, 1] and rank_gpus(plan, 1) == [3]
    assert rank_gpus(Plan(), 2) is None


class StubTwoGpus(StubGpu):
    """Two GPUs that do not work alike, as tensor-parallel ranks often do not."""

    def devices(self):
        return [gpu.GpuStatic(index=i, name="Stub GPU", vendor="none", memory_total=80 << 30)
                for i in (0, 1)]

    def sample(self, pid=None):
        t = time.perf_counter_ns()
        return [gpu.GpuSample(t_ns=t, index=0, power_w=250.0, util_pct=90.0, mem_used=10 << 30),
                gpu.GpuSample(t_ns=t, index=1, power_w=100.0, util_pct=30.0, mem_used=5 << 30)]


def test_tensor_parallel_report_shows_each_gpu(tmp_path, monkeypatch, capsys):
    from llmtop.cli import main

    monkeypatch.setattr(gpu, "detect_backend", lambda: StubTwoGpus())
    out = tmp_path / "tele-tp"
    code = main(["bench", "--model", "synthetic:tiny", "--device", "cpu", "--tp", "1,2", "--batch", "1",
                 "--prompt-len", "16", "--max-new-tokens", "40", "--repeat", "1", "--warmup", "0",
                 "--preset", "baseline", "--out", str(out), "--no-plots"])
    assert code == 0, capsys.readouterr().err
    points = {p["tp"]: p for p in json.loads((out / "bench.json").read_text())["points"]}
    # on a CPU no GPU is the engine's, so every GPU the sampler sees is charged
    assert points[2]["per_gpu"] == {"0": {"power_w": 250.0, "util_pct": 90.0, "mem_used_gib": 10.0},
                                    "1": {"power_w": 100.0, "util_pct": 30.0, "mem_used_gib": 5.0}}
    assert points[2]["mean_power_w"] == 350.0
    md = (out / "report.md").read_text()
    assert "Each GPU during the measured runs" in md
    assert "| baseline | 2 | 1 | 0 | 90 | 250 | 10.0 |" in md
    assert "| baseline | 2 | 1 | 1 | 30 | 100 | 5.0 |" in md


class CrashingGpu(StubGpu):
    """A vendor library that segfaults after a second of polling, as NVML did in `llmtop bench`
    on 4 x H200 (docs/tp-study.md)."""

    polls = 0

    def sample(self, pid=None):
        CrashingGpu.polls += 1
        if CrashingGpu.polls > 10:
            import ctypes
            import faulthandler
            faulthandler.disable()  # pytest's dump of every stack would only clutter the log
            ctypes.string_at(0)     # SIGSEGV
        return super().sample(pid)


def test_a_crash_in_the_gpu_library_ends_the_readings_not_the_sweep(tmp_path, monkeypatch, capsys):
    from llmtop.cli import main

    monkeypatch.setattr(gpu, "detect_backend", lambda: CrashingGpu())
    out = tmp_path / "crash"
    code = main(["bench", "--model", "synthetic:tiny", "--device", "cpu", "--batch", "1,2,4",
                 "--prompt-len", "16", "--max-new-tokens", "64", "--repeat", "2", "--warmup", "0",
                 "--preset", "baseline", "--out", str(out), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 0, err
    points = json.loads((out / "bench.json").read_text())["points"]
    assert [p["status"] for p in points] == ["ok"] * 3
    lost = [r["telemetry"] for p in points for r in p["runs"] if not r["telemetry"]["available"]]
    assert lost and "the GPU sampler process died (killed by signal 11)" in lost[-1]["reason"]
    assert sum("GPU sampler process died" in line for line in err.splitlines()) == 1
