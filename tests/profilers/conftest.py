"""Puts tests/ on sys.path so the profiler tests can import the vendor fakes (`fakes`)."""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
