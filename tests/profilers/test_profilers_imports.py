"""profilers/ runs in the UI process, which must never pull in Textual or torch."""

import subprocess
import sys

import pytest

MODULES = ["gpu", "gpu_set", "nvml", "amdsmi_backend", "host", "numa", "topology", "sampler", "report"]


def heavy_modules_after(*statements: str) -> str:
    """The textual / torch modules a fresh interpreter holds after running the statements."""
    code = "; ".join([*statements, "import sys", "print(sorted(m for m in sys.modules "
                      "if m.split('.')[0] in ('textual', 'torch')))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return result.stdout.splitlines()[-1]


def test_profilers_import_no_textual_or_torch():
    imports = [f"import llmtop.profilers.{m}" for m in MODULES]
    assert heavy_modules_after(*imports, "llmtop.profilers.report.info_dict()") == "[]"


def test_the_check_would_see_them():
    """Guards the test above: where Textual is installed, importing it is reported."""
    pytest.importorskip("textual")
    assert "'textual'" in heavy_modules_after("import textual")
