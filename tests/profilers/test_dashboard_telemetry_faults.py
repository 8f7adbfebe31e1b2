"""The dashboard (a real Textual pilot) with NVML failing under it: it never dies of
telemetry, a failed GPU reads n/a in one line while the other updates, the NUMA panel names
each GPU's node with its source, and quitting stops the sampler and closes the library."""

from __future__ import annotations

import asyncio
import time

import pytest
from fakes.loader import load_fake, use_fake

pytest.importorskip("textual")
from llmtop.tui.app import LlmtopApp  # noqa: E402


def text_of(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if condition():
            return
    raise AssertionError(f"timed out waiting for {what}")


def run(body, size: tuple[int, int] = (160, 60)) -> LlmtopApp:
    async def main():
        app = LlmtopApp(start_engine=False, telemetry=True, telemetry_hz=20.0)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
        return app
    return asyncio.run(main())


@pytest.fixture
def box(monkeypatch):
    """Two H100s on nodes 0 and 1 as NVML's memory affinity says; no amdsmi."""
    fake = load_fake(monkeypatch, "pynvml")
    use_fake(monkeypatch, "amdsmi", installed=False)
    gpus = [fake.FakeGpu(bus_id="00000000:17:00.0", uuid="GPU-a", numa_node=0, util_gpu=87),
            fake.FakeGpu(bus_id="00000000:CA:00.0", uuid="GPU-b", numa_node=1)]
    fake.configure(gpus)
    return fake


def test_nvml_that_cannot_start_is_one_line_and_the_dashboard_runs(box):
    box._state["faults"] = {"nvmlDeviceGetCount": box.NVML_ERROR_NO_PERMISSION}

    async def body(app, pilot):
        await pilot.press("g")
        await until(pilot, lambda: app.telemetry.backend, "the telemetry worker")
        app.redraw_all()
        await pilot.pause()
        text = text_of(app)
        assert "no GPU telemetry on this machine" in text
        assert "NVML: cannot count the GPUs (NVMLError_NoPermission:" in text  # wraps here
        assert app.telemetry.reasons[0] == ("NVML: cannot count the GPUs (NVMLError_NoPermission: "
                                            "Insufficient Permissions)")
        assert app.is_running
    app = run(body)
    assert app.return_code in (None, 0)


def test_a_worker_surprise_is_one_line_not_a_dead_dashboard(box, monkeypatch):
    """Anything the backends did not foresee used to end the app (WorkerFailed)."""
    from llmtop.profilers import gpu

    def broken():
        raise RuntimeError("driver went away")
    monkeypatch.setattr(gpu, "detect_backend", broken)

    async def body(app, pilot):
        await pilot.press("g")
        await until(pilot, lambda: app.telemetry.backend, "the telemetry worker")
        app.redraw_all()
        await pilot.pause()
        assert app.telemetry.reasons == ["GPU telemetry failed: RuntimeError: driver went away"]
        assert "GPU telemetry failed: RuntimeError: driver" in text_of(app)
        assert app.is_running
    app = run(body)
    assert app.return_code in (None, 0)


def test_a_lost_gpu_reads_na_and_the_other_updates_then_quit_closes_nvml(box):
    box._state["faults"] = {("nvmlDeviceGetHandleByIndex", 1): box.NVML_ERROR_GPU_IS_LOST}
    seen = {}

    async def body(app, pilot):
        await pilot.press("g")
        await until(pilot, lambda: app.telemetry.gpu.get(0), "GPU0's samples")
        app.redraw_all()
        await pilot.pause()
        text = text_of(app)
        assert "n/a: NVMLError_GpuIsLost: GPU is lost" in text
        assert " 87%" in text  # GPU0's utilization still shown
        await pilot.press("n")
        await until(pilot, lambda: app.telemetry.numa is not None, "the NUMA reading")
        app.redraw_all()
        await pilot.pause()
        assert "GPU0 → node 0 (NVML memory affinity)" in text_of(app)
        seen["sampler"] = app._sampler
        assert seen["sampler"]._thread.is_alive()
    run(body)
    sampler = seen["sampler"]
    assert not sampler._thread.is_alive()   # quitting stopped the sampler thread
    assert box._state["initialized"] == 0   # and shut NVML down


def test_numa_panel_names_node_source_verdicts_and_the_fix():
    """The engine's threads on node 0 and most of its memory on node 1: GPU0 (node 0, from
    NVML) gets memory off and the numactl line; GPU1 (node 1, sysfs) threads off and taskset."""
    from llmtop.profilers.numa import NumaNode, NumaStatus

    status = NumaStatus(balancing=0, warning=None,
                        nodes=[NumaNode(0, [0, 1]), NumaNode(1, [2, 3])],
                        gpu_nodes={0: 0, 1: 1, 2: -1}, pid=4242, affinity=[0, 1],
                        local={0: True, 1: False, 2: None},
                        gpu_node_sources={0: "NVML memory affinity", 1: "sysfs", 2: "unknown"},
                        engine_mem={0: 1 << 20, 1: 3 << 20})

    async def main():
        app = LlmtopApp(start_engine=False, telemetry=False)
        async with app.run_test(size=(160, 60)) as pilot:
            app.feed_telemetry("NVML", [], [], [], numa=status)
            await pilot.press("n")
            app.redraw_all()
            await pilot.pause()
            return text_of(app)
    lines = [line.split("│")[-2].strip() for line in asyncio.run(main()).splitlines()
             if line.count("│") >= 2]
    at = lines.index("GPU0 → node 0 (NVML memory affinity)")
    assert lines[at + 1:at + 5] == [
        "threads ✓ on it  memory ✗ off it (25% of its pages)",
        "fix: numactl --cpunodebind=0 --membind=0 llmtop",
        "GPU1 → node 1 (sysfs)",
        "threads ✗ off it  memory ✓ on it (75% of its pages)"]
    text = "\n".join(lines)
    assert "fix: taskset -a -c -p 2-3 4242" in text
    assert "GPU2 → node unknown (no vendor or sysfs answer)" in text


def test_the_mi250_fabric_is_readable_in_the_gpu_panel(monkeypatch):
    """Eight dies through the real telemetry worker (fake amdsmi): the matrix fits the panel
    (compact cells: hops and direct GB/s), the TP=4 set is starred, and its why line says
    what makes it the choice; a weight that failed makes it say degraded."""
    from fakes.machines import mi250_gpus, mi250_pairs

    nv = load_fake(monkeypatch, "pynvml")
    nv.configure([], library_missing=True)
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake),
                   faults={("amdsmi_topo_get_link_weight", 5): fake.AmdSmiRetryException()})

    async def body(app, pilot):
        await pilot.press("g")
        await until(pilot, lambda: app.telemetry.topology is not None, "the link matrix")
        app.redraw_all()
        await pilot.pause()
        lines = [line.split("│")[-2].rstrip() for line in text_of(app).splitlines()
                 if line.count("│") >= 2]
        at = next(k for k, line in enumerate(lines) if line.startswith(" topology (amdsmi)"))
        header = lines[at + 1].split()
        assert header == ["GPU0*", "GPU1*", "GPU2", "GPU3", "GPU4", "GPU5", "GPU6*", "GPU7*"]
        assert lines[at + 2].split() == ["GPU0*", "X", "1h200", "1h50", "2h", "2h", "2h",
                                         "1h100", "2h"]
        text = "\n".join(lines)
        assert "TP=4: GPUs 0,1,6,7: weakest link it must cross 100 GB/s;" in text
        assert "recommendation degraded: 7 of 28 pairs not fully read" in text
        assert "bandwidth unknown" not in text  # only weights failed
    run(body, size=(160, 140))  # eight dies' panels and the matrix, all on screen
