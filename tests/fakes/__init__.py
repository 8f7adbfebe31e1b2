"""Faithful fakes of vendor libraries (pynvml, amdsmi) for tests on machines without GPUs."""
