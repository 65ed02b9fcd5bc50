#!/usr/bin/env bash
# The GPU checks of this project for one lent GPU machine (its image brings its own CUDA torch; no internet):
# one command that ends within GPU_CHECK_SECONDS (default 480 s = 8 min, all parts and clean-up together),
# the decisive measurements first. It runs from the working tree (PYTHONPATH=.) and installs the carried
# wheels of .whl/ (scripts/gpu_wheels.sh), if any, into /tmp/site.
#   scripts/gpu_check.sh [PART ...]     PART: tests, bench, study (default: all three, in this order)
#   tests  the CUDA tests: renderer CPU = CUDA, side-stream data path, iterations without a host sync,
#          validation from pinned host memory, device metrics on CUDA                                  ≤ 75 s
#   bench  python -m qsmrep bench --profile paper --json --save: steps, data path, validation, memory,
#          evaluation, projection first; fp32, cuDNN autotuning, generator after; rows saved as measured ≤ 240 s
#   study  ./run_all.sh --profile gpu (six variants, evaluation, report): the time that is left (it resumes)
# A part gets min(its limit, the budget left less 35 s for clean-up); it runs under `timeout` with a marker in its
# environment, and when it ends or is cut off every process carrying the marker is ended (TERM, then KILL),
# also one that left its process group (a notebook kernel), so nothing keeps the GPU or the run's lock
# (results/<profile>/.lock, a flock held by run_all.sh and its children) and a rerun starts clean.
# OUT (default gpu_check/) receives device.txt (device, each part's exit status, seconds and limit; 124: cut
# off), logs.tar.gz, the bench rows (<card>-<date>.jsonl: commit them under results/bench/) and
# gpu_study.tar.gz (results/<profile> and figures/<profile> without checkpoints; unpack in the project root).
# QSMREP_FAKE_DEVICE=1: a dry run on a CPU at smoke size (bench --profile smoke --paper-rows --quick, the study
# at smoke); STUDY_PROFILE overrides the study's profile.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET="${GPU_CHECK_SECONDS:-480}" RESERVE=35 GRACE=10
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT/logs"
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(tests bench study)
PY="$(command -v "${PYTHON:-python3}")"
FAKE="${QSMREP_FAKE_DEVICE:-0}"
MARK="QSMREP_CHECK_PART=$PWD:"  # prefix of the marker of every part started from this checkout

marked() {  # marked PREFIX: pids of the processes whose environment holds a variable starting with PREFIX
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    [ "$pid" != $$ ] && grep -qzF -- "$1" "$f" 2>/dev/null && echo "$pid"
  done
}
end_marked() {  # end_marked PREFIX: TERM every marked process, KILL what is left after 2 s
  local pids
  pids=$(marked "$1"); [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null; sleep 2
  pids=$(marked "$1"); [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
  return 0
}
say() { echo "$*" | tee -a "$OUT/device.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

CURRENT=""
on_signal() {  # cut off from outside: end the running part and everything it started, keep what is in OUT
  [ -z "$CURRENT" ] || { kill -TERM -- -"$CURRENT" 2>/dev/null; end_marked "$MARK"; }
  say "interrupted after $(( $(date +%s) - START )) s"
  exit 143
}
trap on_signal INT TERM HUP

part() {  # part NAME LIMIT COMMAND...: COMMAND under timeout (own process group) with the part's marker
  local name=$1 limit=$2 start rc; shift 2
  local budget=$(( $(left) - RESERVE ))
  [ "$budget" -lt "$limit" ] && limit=$budget
  if [ "$limit" -lt 20 ]; then say "$name not started: $(left) s of the budget left"; return; fi
  start=$(date +%s)
  env "${MARK}$name" timeout -k "$GRACE" "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 &
  CURRENT=$!
  wait "$CURRENT"; rc=$?
  CURRENT=""
  end_marked "${MARK}$name"
  say "$name rc $rc, $(( $(date +%s) - start )) s (limit $limit s)"
}

end_marked "$MARK"  # what an earlier check of this checkout left running
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/logs/wheels.log" 2>&1 || say "installing .whl/ failed (logs/wheels.log)"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" JUPYTER_PATH="/tmp/site/share/jupyter"  # nbconvert's templates
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1 | tee -a "$OUT/device.txt"
say "budget $BUDGET s, parts ${PARTS[*]}, fake device $FAKE"

for p in "${PARTS[@]}"; do
  case "$p" in
    tests) part tests 75 "$PY" -m pytest -q -p no:cacheprovider tests/test_device_path.py tests/test_synth.py \
             tests/test_train.py -k cuda ;;
    bench)
      if [ "$FAKE" = 1 ]; then ROWS=(--profile smoke --paper-rows --quick --no-monai)
      else ROWS=(--profile paper); "$PY" -c "import monai" 2>/dev/null || ROWS+=(--no-monai); fi
      part bench 240 "$PY" -m qsmrep bench "${ROWS[@]}" --json --save "$OUT" ;;
    study)
      STUDY="${STUDY_PROFILE:-$([ "$FAKE" = 1 ] && echo smoke || echo gpu)}"
      part study "$BUDGET" env QSMREP_NO_INSTALL=1 QSMREP_PYTHON="$PY" ./run_all.sh --profile "$STUDY"
      timeout 15 "$PY" -m qsmrep status --profile "$STUDY" >> "$OUT/device.txt" 2>&1
      tar czf "$OUT/gpu_study.tar.gz" --exclude='*.pt' --exclude=cache --exclude=arrays.npz --exclude=.lock \
        "results/$STUDY" "figures/$STUDY" 2>/dev/null ;;
    *) echo "unknown part '$p' (tests, bench, study)" >&2; exit 2 ;;
  esac
done
say "done in $(( $(date +%s) - START )) s of $BUDGET"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
