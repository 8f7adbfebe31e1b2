"""llmtop: live LLM inference profiling in the terminal."""

__version__ = "0.1.0"

# the distribution `pip install` names; the command and the import package stay `llmtop`
# (on PyPI the name `llmtop` belongs to another project)
DISTRIBUTION = "llmtop-profiler"
