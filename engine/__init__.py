"""The inference engine: model loading, generation with per-token stamps, optimizations.

Runs in its own process; only `client` and the pure-Python modules are imported by the UI side.
"""
