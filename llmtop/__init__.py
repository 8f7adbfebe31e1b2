"""llmtop: live LLM inference profiling in the terminal."""

__version__ = "0.1.0"
