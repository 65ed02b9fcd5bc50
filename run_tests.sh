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
# one pytest worker per core, at most 4 (pytest-xdist; QSMREP_TEST_WORKERS=1 runs them one after another, and so
# does an interpreter without xdist, e.g. a given one); a "-n N" among the arguments wins, being the later
WORKERS=${QSMREP_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
PARALLEL=()
[ "$WORKERS" -gt 1 ] && "$PY" -c 'import xdist' 2>/dev/null && PARALLEL=(-n "$WORKERS")
exec "$PY" -m pytest ${PARALLEL[@]+"${PARALLEL[@]}"} "$@"
