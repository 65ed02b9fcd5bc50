#!/usr/bin/env bash
# The test command: sets up the environment if needed, checks the import layers (lint-imports), then runs the test suite.
#   ./run_tests.sh            all tests
#   ./run_tests.sh -m "not slow"   pytest arguments pass through
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/scripts/ensure_env.sh"
cd "$ROOT"
# lint-imports: the layers and acyclic contracts of pyproject.toml (no upward import, no cycle). The install puts
# import-linter in the environment; only a given interpreter (QSMREP_NO_INSTALL=1, e.g. a GPU image) may lack it.
if [ "${QSMREP_NO_INSTALL:-0}" = 1 ] && ! "$PY" -c 'import importlinter' 2>/dev/null; then
  echo "note: import-linter is not installed in $PY: the import-layer check is skipped" >&2
else
  "$PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache
fi
exec "$PY" -m pytest "$@"
