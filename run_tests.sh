#!/usr/bin/env bash
# The test command: sets up the environment if needed, then runs the test suite.
#   ./run_tests.sh            all tests
#   ./run_tests.sh -m "not slow"   pytest arguments pass through
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/scripts/ensure_env.sh"
cd "$ROOT"
exec "$PY" -m pytest "$@"
