# Sourced by run_all.sh and run_tests.sh: create or reuse the project's Python environment, install
# what is missing, register the Jupyter kernel "qsmrep". Sets PY (the environment's python).
#   QSMREP_VENV       where the virtual environment lives (default: <project>/.venv)
#   QSMREP_PYTHON     interpreter that creates it (default: python3; needs ≥ 3.10)
#   QSMREP_NO_INSTALL 1: no virtual environment and no pip: use QSMREP_PYTHON as it is (e.g. a machine without
#                     internet whose image has its own torch; missing packages are named, nothing is installed)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QSMREP_VENV:-$ROOT/.venv}"
BASE_PY="${QSMREP_PYTHON:-python3}"
"$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: $BASE_PY is not Python ≥ 3.10; set QSMREP_PYTHON" >&2; exit 2; }
if [ "${QSMREP_NO_INSTALL:-0}" = 1 ]; then
  PY="$(command -v "$BASE_PY")"
  MISSING=$("$PY" - <<'PYEOF'
import importlib.util
modules = ["torch", "numpy", "scipy", "skimage", "pandas", "matplotlib", "tqdm", "yaml", "nibabel",
           "ipykernel", "papermill", "nbconvert", "nbformat", "snakemake", "pytest"]
print(" ".join(m for m in modules if importlib.util.find_spec(m) is None))
PYEOF
)
  [ -z "$MISSING" ] || { echo "error: QSMREP_NO_INSTALL=1, and $PY lacks: $MISSING (install them, or put them on PYTHONPATH)" >&2; exit 2; }
  # this interpreter's kernel "qsmrep", in the checkout (where a cluster's nodes see it too), not in the user's
  # Jupyter folders; one folder per interpreter; the workflow's steps run "$PY" itself (workflow/Snakefile)
  KERNEL_PREFIX="$ROOT/.jupyter/$(printf %s "$PY" | sha256sum | cut -c1-12)"
  "$PY" -m ipykernel install --prefix "$KERNEL_PREFIX" --name qsmrep --display-name "Python (qsmrep)" >/dev/null \
    && export JUPYTER_PATH="$KERNEL_PREFIX/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
else
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating Python environment $VENV"
    "$BASE_PY" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
  STAMP="$VENV/.qsmrep-install"
  WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "==> installing qsmrep and its dependencies into $VENV (first run only)"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "$ROOT[reproduce,test,bench]" -c "$ROOT/constraints.txt"  # the lock's exact versions
    echo "$WANT" > "$STAMP"
  fi
  # the notebooks' kernel inside the venv (share/jupyter/kernels/qsmrep), which the workflow names on every node
  [ -f "$VENV/share/jupyter/kernels/qsmrep/kernel.json" ] \
    || "$PY" -m ipykernel install --sys-prefix --name qsmrep --display-name "Python (qsmrep)" >/dev/null
  export PATH="$VENV/bin:$PATH"  # this environment's tools first (jupyter, snakemake)
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
