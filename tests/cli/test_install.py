"""What `pip install` gives: the distribution's name (PyPI's `llmtop` is another project), its
extras, and the package llmtop assembled from four folders, read from the installed metadata."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmtop import DISTRIBUTION
from llmtop.bench_charts import PLOTS_HINT

ROOT = Path(__file__).resolve().parents[2]


def installed() -> metadata.Distribution:
    """The distribution that installed this environment's `llmtop` command (its RECORD lists
    the script), read from the installed metadata, not from llmtop's own constant."""
    script = Path(sys.executable).with_name("llmtop").resolve()
    scripts = [d for d in metadata.distributions()
               if any(e.group == "console_scripts" and e.name == "llmtop" for e in d.entry_points)]
    owners = [d for d in scripts if any(Path(d.locate_file(f)).resolve() == script
                                        for f in d.files or [] if f.name == "llmtop")]
    assert len(owners) == 1, [d.metadata["Name"] for d in owners]
    assert any(e.name == "llmtop" and e.value == "llmtop.cli:main" for e in owners[0].entry_points)
    return owners[0]


def test_hints_name_the_installed_distribution() -> None:
    dist = installed()
    assert canonicalize_name(dist.metadata["Name"]) == canonicalize_name(DISTRIBUTION) != "llmtop"
    assert PLOTS_HINT == f"pip install '{DISTRIBUTION}[plots]'"
    assert {"plots", "engine", "dev"} <= set(dist.metadata.get_all("Provides-Extra"))


def test_a_plain_install_asks_for_no_torch_and_setup_installs_the_charts() -> None:
    """torch (PyPI's Linux wheel: a CUDA build) and matplotlib come with extras only; setup.sh
    installs both extras, so the charts the README shows are there after it."""
    by_name: dict[str, list[str]] = {}
    for text in installed().requires or []:
        req = Requirement(text)
        by_name.setdefault(canonicalize_name(req.name), []).append(str(req.marker or ""))
    assert by_name["torch"] == ['extra == "engine"']
    assert by_name["accelerate"] == ['extra == "engine"']
    assert by_name["matplotlib"] == ['extra == "plots"']
    assert by_name["textual"] == [""]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'extras="engine,plots"' in setup and 'extras="engine,plots,dev"' in setup
    import matplotlib  # noqa: F401  (installed by setup.sh's plots extra)


def test_the_package_imports_from_the_repo_root() -> None:
    """The reason setup.sh silences setuptools' "folders with the same name as your package"
    notice: run from the repo root, where the folder llmtop/ is, every part of the package still
    comes from its own folder."""
    code = ("import llmtop, llmtop.engine, llmtop.tui, llmtop.profilers, llmtop.themes as t; "
            "print(llmtop.__file__, llmtop.engine.__file__, llmtop.tui.__file__, "
            "llmtop.profilers.__file__, list(t.__path__)[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(ROOT / "llmtop" / "__init__.py"), str(ROOT / "engine" / "__init__.py"),
                   str(ROOT / "tui" / "__init__.py"), str(ROOT / "profilers" / "__init__.py"),
                   str(ROOT / "themes")]
