#!/usr/bin/env bash
# The import contracts of pyproject.toml ([tool.importlinter]), checked on an installed copy:
# the folders become llmtop.* only once installed (package-dir mapping), and the editable
# install's import hook would hide that copy, so the check runs without site hooks (-S).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ $# -gt 0 ] && [ -f "$1" ] && shift  # a config path given to lint-imports: ours is pyproject.toml
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
"$py" -m pip install -q --no-deps --no-build-isolation --target "$site/lib" "$root" >/dev/null 2>&1
# a second tree (e.g. a test's copy with an extra module) may stand in for the installed one
[ -n "${LLMTOP_LINT_TREE:-}" ] && rm -rf "$site/lib/llmtop" && cp -r "$LLMTOP_LINT_TREE" "$site/lib/llmtop"
purelib="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cd "$site"
PYTHONPATH="$site/lib:$purelib" "$py" -S -c '
import sys
from importlinter.cli import lint_imports_command
sys.argv = ["lint-imports", sys.argv[1]]
sys.exit(lint_imports_command())' "$root/pyproject.toml"
