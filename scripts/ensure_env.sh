# Sourced by run_all.sh and run_tests.sh: create or reuse the project's Python environment, install
# what is missing, register the Jupyter kernel "qsmrep". Sets PY (the environment's python).
#   QSMREP_VENV   where the virtual environment lives (default: <project>/.venv)
#   QSMREP_PYTHON interpreter that creates it (default: python3; needs ≥ 3.10)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QSMREP_VENV:-$ROOT/.venv}"
BASE_PY="${QSMREP_PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating Python environment $VENV"
  "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "error: $BASE_PY is older than Python 3.10; set QSMREP_PYTHON" >&2; exit 2; }
  "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.qsmrep-install"
WANT="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "==> installing qsmrep and its dependencies into $VENV (first run only)"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e "$ROOT[test,bench]"
  "$PY" -m ipykernel install --sys-prefix --name qsmrep --display-name "Python (qsmrep)" >/dev/null
  echo "$WANT" > "$STAMP"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$VENV/bin:$PATH"  # the workflow's steps call "python": this environment's
