"""Architecture promises: what the UI side imports, and how the package installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

UI_SIDE = ["llmtop.cli", "llmtop.engine.protocol", "llmtop.engine.metrics", "llmtop.settings",
           "llmtop.headless", "llmtop.engine.client", "llmtop.engine.catalogue",
           "llmtop.engine.session", "llmtop.engine.session_log", "llmtop.engine.spec",
           "llmtop.profilers", "llmtop.tui"]


def test_ui_side_modules_import_no_torch_in_a_fresh_interpreter():
    code = ("import importlib, sys\n"
            f"for m in {UI_SIDE!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
            "print(','.join(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""


def test_package_installs_under_the_llmtop_namespace_only(tmp_path):
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "-q", "--target", str(target), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    top = {d.name for d in target.iterdir()}
    assert "llmtop" in top
    assert not top & {"engine", "tui", "profilers", "themes"}
    for sub in ("engine", "engine/backends", "engine/optimizations", "profilers", "tui", "themes"):
        assert (target / "llmtop" / sub / "__init__.py").exists()
    code = ("import llmtop.engine.spec, llmtop.cli, llmtop.tui.app\n"
            "from llmtop.tui import theming\n"
            "assert {'llmtop-dark', 'llmtop-light', 'llmtop-rocm'} <= set(theming.builtin_themes())\n"
            "import engine")
    p = subprocess.run([sys.executable, "-c", code],
                       capture_output=True, text=True, env={"PYTHONPATH": str(target)}, cwd="/")
    assert "No module named 'engine'" in p.stderr


LINT = ROOT / "scripts" / "lint-imports.sh"


def _lint(env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run([str(LINT)], capture_output=True, text=True, env=env)


def test_import_contracts_hold():
    p = _lint()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "broken" in p.stdout and "0 broken" in p.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: an engine module that imports the CLI is reported by name."""
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "-q", "--target", str(site), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (site / "llmtop" / "engine" / "upward.py").write_text("import llmtop.cli\n")
    p = _lint({"LLMTOP_LINT_TREE": str(site / "llmtop")})
    assert p.returncode != 0
    assert "llmtop.engine.upward -> llmtop.cli" in p.stdout


def test_every_command_module_sits_in_the_commands_layer():
    """A module added to llmtop/ is a command: the layers contract must name it, or tui/ and
    engine/ could import it unseen (the contract is not exhaustive)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    top = cfg["tool"]["importlinter"]["contracts"][0]["layers"][0]
    listed = {m.strip() for m in top.split(":")}
    here = {f"llmtop.{p.stem}" for p in (ROOT / "llmtop").glob("*.py")
            if p.stem not in ("__init__", "__main__")}
    assert here <= listed, sorted(here - listed)
