"""Makes `import pynvml` / `import amdsmi` run a fake's source file, as a real import would.

A finder on sys.meta_path (rather than a ready module in sys.modules) means the fake's
import-time behaviour runs for real: the fake amdsmi printing and raising KeyError on a machine
"without ROCm" is exercised exactly where the code under test imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FAKES = Path(__file__).parent


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, path: Path | None) -> None:
        self.name, self.path = name, path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self.path is None:
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return importlib.util.spec_from_file_location(fullname, self.path)


def use_fake(monkeypatch: pytest.MonkeyPatch, name: str, installed: bool = True) -> None:
    """From now until the test ends, `import name` loads tests/fakes/<name>.py afresh (or
    fails with ModuleNotFoundError when installed=False)."""
    monkeypatch.setitem(sys.modules, name, None)  # records what to restore when the test ends
    monkeypatch.delitem(sys.modules, name)
    finder = _Finder(name, FAKES / f"{name}.py" if installed else None)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])


def load_fake(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """use_fake(), then the imported fake module itself, for configure()."""
    use_fake(monkeypatch, name)
    return importlib.import_module(name)
