#!/usr/bin/env bash
# The GPU checks of this project, prepared for a lent GPU machine whose image has its own torch and no internet:
# it runs from the working tree (PYTHONPATH=.), installs the carried wheels of .whl/ (scripts/gpu_wheels.sh) into
# /tmp/site, and writes at most four files to OUT.
#   scripts/gpu_check.sh [PART ...]     PART: tests, bench, study (default: all three, ≈ 14 min)
# Parts and their time limits (the lent machine allows 10 minutes per command: run "tests bench", then "study"):
#   tests   the CUDA tests: renderer (CPU and CUDA maps agree), side-stream data path           ≤ 1.5 min
#   bench   python -m qsmrep bench --profile paper --json --save (rows under results/bench/)    ≤ 5 min
#   study   ./run_all.sh --profile gpu: six variants, evaluation, figures, report               ≤ 8 min
# OUT (default: gpu_check/) receives device.txt (device, each part's exit status and seconds), logs.tar.gz,
# the bench rows (<card>-<date>.jsonl) and gpu_study.tar.gz (results/gpu and figures/gpu without checkpoints;
# unpack it in the project's root). STUDY_PROFILE=smoke runs the study part at smoke size (a rehearsal on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT" "$OUT/logs"
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(tests bench study)
PY="$(command -v "${PYTHON:-python3}")"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/logs/wheels.log" 2>&1 || { echo "installing .whl/ failed (logs/wheels.log)" | tee -a "$OUT/device.txt"; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" JUPYTER_PATH="/tmp/site/share/jupyter"  # nbconvert's templates
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$OUT/device.txt"

part() {  # part NAME SECONDS COMMAND...: run COMMAND in its own process group, stop it after SECONDS
  local name=$1 limit=$2 start rc; shift 2
  start=$(date +%s)
  setsid "$@" > "$OUT/logs/$name.log" 2>&1 &
  local pid=$!
  ( sleep "$limit"; kill -TERM -- -"$pid" 2>/dev/null; sleep 15; kill -KILL -- -"$pid" 2>/dev/null ) &
  local watchdog=$!
  wait "$pid"; rc=$?
  kill "$watchdog" 2>/dev/null
  echo "$name rc $rc, $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$OUT/device.txt"
}

for p in "${PARTS[@]}"; do
  case "$p" in
    tests) part tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_synth.py tests/test_train.py -k cuda ;;
    bench)
      MONAI=$("$PY" -c "import monai" 2>/dev/null || echo "--no-monai")
      part bench 300 "$PY" -m qsmrep bench --profile paper --json --save $MONAI
      cp results/bench/*.jsonl "$OUT/" 2>/dev/null ;;
    study)
      STUDY="${STUDY_PROFILE:-gpu}"
      part study 480 env QSMREP_NO_INSTALL=1 QSMREP_PYTHON="$PY" ./run_all.sh --profile "$STUDY"
      "$PY" -m qsmrep status --profile "$STUDY" >> "$OUT/device.txt" 2>&1
      tar czf "$OUT/gpu_study.tar.gz" --exclude='*.pt' --exclude=cache --exclude=arrays.npz --exclude=.lock \
        "results/$STUDY" "figures/$STUDY" 2>/dev/null ;;
    *) echo "unknown part '$p' (tests, bench, study)" >&2; exit 2 ;;
  esac
done
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
