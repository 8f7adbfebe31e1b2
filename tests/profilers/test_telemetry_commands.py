"""`llmtop top` and `llmtop info` as a user runs them, on a machine whose NVML fails: the
fake pynvml (faults configured) is what `import pynvml` finds in the child process. Neither
command may print a traceback or exit non-zero because of telemetry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).parents[1] / "fakes"
WRAPPER = """\
# `import pynvml` in the child runs the fake's source as this module, then describes the box
_path = {fake!r}
exec(compile(open(_path).read(), _path, "exec"))
_gpus = [FakeGpu(bus_id="00000000:17:00.0", uuid="GPU-a"),
         FakeGpu(bus_id="00000000:CA:00.0", uuid="GPU-b")]
_gpus[0].nvlinks = [_gpus[1].bus_id] * 18
_gpus[1].nvlinks = [_gpus[0].bus_id] * 18
configure(_gpus, faults={{{faults}}})
"""


def llmtop(tmp_path: Path, faults: str, *args: str, timeout: float = 120):
    (tmp_path / "pynvml.py").write_text(WRAPPER.format(fake=str(FAKES / "pynvml.py"),
                                                       faults=faults))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "llmtop", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("fault", ["NVML_ERROR_UNKNOWN", "NVML_ERROR_NO_PERMISSION",
                                   "NVML_ERROR_GPU_IS_LOST"])
def test_top_with_nvml_failing_at_start_streams_the_host(tmp_path, fault):
    done = llmtop(tmp_path, f"'nvmlDeviceGetCount': {fault}", "top", "--count", "2",
                  "--interval", "0.01")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# no GPU: NVML: cannot count the GPUs (NVMLError_")
    assert lines[0].endswith("; amdsmi: not installed; host rows only")
    assert [line.split()[1] for line in lines[2:]] == ["host", "host"]


def test_top_with_one_gpu_lost_keeps_the_other(tmp_path):
    done = llmtop(tmp_path, "('nvmlDeviceGetHandleByIndex', 1): NVML_ERROR_GPU_IS_LOST",
                  "top", "--count", "3", "--interval", "0.01")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("# GPU1: NVMLError_GpuIsLost: GPU is lost") == 1
    rows = [line.split() for line in lines if not line.startswith("#")]
    assert [r[1] for r in rows] == ["0", "1", "host"] * 3
    assert rows[0][6] == "70.0" and rows[1][2:] == ["n/a"] * 17


def test_info_with_nvml_failing_everywhere_it_can(tmp_path):
    """Remote PCI info refused on GPU0, NVLink state unknown on GPU1, shutdown failing."""
    done = llmtop(tmp_path, "('nvmlDeviceGetNvLinkRemotePciInfo', 0): NVML_ERROR_NO_PERMISSION, "
                            "('nvmlDeviceGetNvLinkState', 1): NVML_ERROR_UNKNOWN, "
                            "'nvmlShutdown': NVML_ERROR_UNKNOWN", "info", timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert "GPU backend: NVML (driver 550.54.15" in out
    assert "  read error: GPU0 nvlink: NVMLError_NoPermission: Insufficient Permissions" in out
    assert "  read error: GPU1 nvlink: NVMLError_Unknown: Unknown Error" in out
    assert "  topology read error: GPU0-GPU1: GPU0 NVLink state: NVMLError_NoPermission" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["GPU0*"]]
    assert rows[1] == ["GPU0*", "X", "n/a"]  # rows[0] is the header row
