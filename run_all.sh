#!/usr/bin/env bash
# The whole reproduction for one profile: set-up if needed, train the six variants, evaluate,
# draw Figures 1-4, render results/<profile>/report.html. Finished steps are skipped, interrupted
# training resumes; see README.md.
# The whole script is one block, read before it runs: editing this file during a run cannot corrupt that run.
{
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ./run_all.sh [--profile cpu|smoke|paper] [--force] [--jobs N] [--seeds N] [--extended]

  --profile P   smoke (tests, ~2 min), cpu (default, ~45 min on 2 cores), paper (GPU, hours per model)
  --force       redo every step, retraining from scratch (otherwise finished steps are skipped)
  --jobs N      train N variants at once (CPU threads are split between them; on several GPUs one each)
  --seeds N     train every variant with seeds 0..N-1 (default 1)
  --extended    also the activation sweep at 16 channels (leaky slopes, ELU alphas, GELU, SiLU, PReLU, Mish)
  -h, --help    this help
USAGE
}

PROFILE=cpu FORCE=0 JOBS=1 SEEDS=1 EXTENDED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || { echo "run_all.sh: error: --profile needs a value" >&2; exit 2; }; PROFILE="$2"; shift 2 ;;
    --profile=*) PROFILE="${1#*=}"; shift ;;
    --force) FORCE=1; shift ;;
    --extended) EXTENDED=1; shift ;;
    --jobs) [ $# -ge 2 ] || { echo "run_all.sh: error: --jobs needs a value" >&2; exit 2; }; JOBS="$2"; shift 2 ;;
    --jobs=*) JOBS="${1#*=}"; shift ;;
    --seeds) [ $# -ge 2 ] || { echo "run_all.sh: error: --seeds needs a value" >&2; exit 2; }; SEEDS="$2"; shift 2 ;;
    --seeds=*) SEEDS="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in smoke|cpu|paper) ;; *)
  echo "run_all.sh: error: --profile '$PROFILE' is not one of smoke, cpu, paper" >&2; exit 2 ;; esac
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: error: --jobs must be a positive integer, got '$JOBS'" >&2; exit 2; }
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: error: --seeds must be a positive integer, got '$SEEDS'" >&2; exit 2; }

START=$SECONDS
source "$(cd "$(dirname "$0")" && pwd)/scripts/ensure_env.sh"
cd "$ROOT"
RES="results/$PROFILE"
FIG="figures/$PROFILE"
NBOUT="$RES/notebooks"
mkdir -p "$RES" "$FIG" "$NBOUT"

exec 9>"$RES/.lock"
if ! flock -n 9; then
  echo "run_all.sh: error: another run_all.sh is writing $RES (lock $RES/.lock); wait for it to finish" >&2
  exit 2
fi

if [ "$PROFILE" = paper ]; then
  "$PY" -m qsmrep estimate --profile paper || exit 2
fi

TIMINGS="$RES/timings.csv"
# one row per step and invocation, appended (the report shows each step's latest real run)
INVOCATION="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ ! -f "$TIMINGS" ] || [ "$FORCE" = 1 ] || [ "$(head -1 "$TIMINGS")" != "invocation,step,seconds,status" ]; then
  echo "invocation,step,seconds,status" > "$TIMINGS"
fi
FAILED=()
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}"

log() { printf '\n==> %s\n' "$*"; }
record() { echo "$INVOCATION,$1,$2,$3" >> "$TIMINGS"; }

# run_notebook NAME OUTPUT_NAME [papermill args...]: execute notebooks/NAME into $NBOUT/OUTPUT_NAME
run_notebook() {
  local name="$1" out="$2"; shift 2
  "$PY" -m papermill "notebooks/$name" "$NBOUT/$out" -k qsmrep --cwd "$ROOT" -p profile "$PROFILE" "$@"
}

# up_to_date OUTPUTS -- INPUTS: true when every output exists and is newer than every input
up_to_date() {
  [ "$FORCE" = 1 ] && return 1
  local outs=() ins=() seen=0 o i
  for a in "$@"; do if [ "$a" = -- ]; then seen=1; elif [ $seen = 0 ]; then outs+=("$a"); else ins+=("$a"); fi; done
  for o in "${outs[@]}"; do
    [ -e "$o" ] || return 1
    for i in "${ins[@]}"; do [ -e "$i" ] && [ "$i" -nt "$o" ] && return 1; done
  done
  return 0
}

# step NAME OUTPUTS -- INPUTS -- COMMAND...: run COMMAND unless up to date; time it; record failure
step() {
  local name="$1"; shift
  local spec=() seen=0
  while [ "$1" != -- ] || [ $seen = 0 ]; do [ "$1" = -- ] && seen=1; spec+=("$1"); shift; done
  shift
  if up_to_date "${spec[@]}"; then
    echo "    $name: up to date, skipped"
    record "$name" 0 skipped
    return 0
  fi
  log "$name"
  local t0=$SECONDS
  if "$@"; then
    record "$name" $((SECONDS - t0)) ok
  else
    record "$name" $((SECONDS - t0)) failed
    FAILED+=("$name")
    echo "!!  step '$name' failed (see above); continuing with what is there" >&2
    return 1
  fi
}

LIB=(qsmrep/*.py)

# ---------------------------------------------------------------- 0. a look at the data
step "data" "$FIG/fig0_data.png" -- notebooks/00_data.ipynb qsmrep/synth.py qsmrep/viz.py -- \
  run_notebook 00_data.ipynb 00_data.ipynb || true

# ---------------------------------------------------------------- 1. training
VARIANTS=()
for seed in $(seq 0 $((SEEDS - 1))); do
  for channels in 16 32; do
    for act in relu leaky_relu elu; do VARIANTS+=("$act:$channels:$seed"); done
  done
done
mapfile -t TODO < <("$PY" -m qsmrep status --profile "$PROFILE" --seeds "$SEEDS" $([ "$FORCE" = 1 ] && echo --all))
log "training: ${#VARIANTS[@]} variants, ${#TODO[@]} to do (profile $PROFILE, $JOBS at a time, $OMP_NUM_THREADS threads each)"

GPUS=0
if [ "$JOBS" -gt 1 ] && command -v nvidia-smi >/dev/null 2>&1; then GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi

train_variant() {  # act:channels:seed slot
  IFS=: read -r act channels seed <<< "$1"
  local slot="$2" name="train ${act}${channels} seed ${seed}" t0=$SECONDS where=""
  local force=False; [ "$FORCE" = 1 ] && force=True
  if [ "$GPUS" -gt 0 ]; then
    export CUDA_VISIBLE_DEVICES=$(( slot % GPUS )); where=" on GPU $CUDA_VISIBLE_DEVICES"
  fi
  echo "    $name: started$where"
  if run_notebook 10_train.ipynb "10_train_${act}${channels}_s${seed}.ipynb" --log-output --no-progress-bar \
       -p activation "$act" -p channels "$channels" -p seed "$seed" -p force "$force" > "$NBOUT/train_${act}${channels}_s${seed}.log" 2>&1; then
    echo "    $name: done in $((SECONDS - t0)) s"
    record "$name" $((SECONDS - t0)) ok
  else
    echo "!!  $name: failed after $((SECONDS - t0)) s; last lines of $NBOUT/train_${act}${channels}_s${seed}.log:" >&2
    grep -v '^\s*$' "$NBOUT/train_${act}${channels}_s${seed}.log" | tail -5 >&2
    record "$name" $((SECONDS - t0)) failed
    return 1
  fi
}

# Slots 0..JOBS-1, each running one variant at a time; slot k uses GPU k mod GPUS, so no two
# concurrent variants share a GPU while there are at least as many GPUs as jobs.
SLOT_PID=()
free_slot() {
  local k running=" $(jobs -rp | tr '\n' ' ') "
  for ((k = 0; k < JOBS; k++)); do
    if [ -z "${SLOT_PID[$k]:-}" ] || [[ "$running" != *" ${SLOT_PID[$k]} "* ]]; then echo "$k"; return 0; fi
  done
  return 1
}
pids=() names=()
for v in "${TODO[@]}"; do
  [ -n "$v" ] || continue
  while ! slot=$(free_slot); do wait -n || true; done
  train_variant "$v" "$slot" &
  SLOT_PID[$slot]=$!
  pids+=($!) names+=("$v")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || FAILED+=("train ${names[$i]}")
done

if [ "$EXTENDED" = 1 ]; then
  mapfile -t SWEEP < <("$PY" -m qsmrep status --profile "$PROFILE" --seeds "$SEEDS" --extended $([ "$FORCE" = 1 ] && echo --all))
  log "extended sweep: ${#SWEEP[@]} runs to do"
  for line in "${SWEEP[@]}"; do
    [ -n "$line" ] || continue
    IFS=$'\t' read -r folder act params seed <<< "$line"
    name="sweep $(basename "$folder")"
    t0=$SECONDS
    echo "    $name: started"
    force=False; [ "$FORCE" = 1 ] && force=True
    if run_notebook 10_train.ipynb "10_train_sweep_$(basename "$folder").ipynb" --log-output --no-progress-bar \
         -p activation "$act" -p channels 16 -p seed "$seed" -p out_dir "$folder" -p force "$force" \
         -y "overrides: {activation_params: $params}" > "$NBOUT/train_sweep_$(basename "$folder").log" 2>&1; then
      echo "    $name: done in $((SECONDS - t0)) s"; record "$name" $((SECONDS - t0)) ok
    else
      echo "!!  $name: failed; see $NBOUT/train_sweep_$(basename "$folder").log" >&2
      record "$name" $((SECONDS - t0)) failed; FAILED+=("$name")
    fi
  done
  step "sweep figure" "$FIG/fig5_sweep.png" "$RES/sweep_metrics.csv" -- notebooks/24_sweep.ipynb \
    $(ls "$RES"/sweep/*/history.csv 2>/dev/null) "${LIB[@]}" -- run_notebook 24_sweep.ipynb 24_sweep.ipynb || true
fi

# ---------------------------------------------------------------- 2. evaluation and figures
step "evaluate" "$RES/metrics_per_map.csv" "$RES/arrays.npz" "$RES/histories.csv" "$RES/costs.csv" -- \
  notebooks/11_evaluate.ipynb $(ls "$RES"/runs/*/history.csv "$RES"/runs/*/epoch_*.pt 2>/dev/null) -- \
  run_notebook 11_evaluate.ipynb 11_evaluate.ipynb || true
step "figure 1" "$FIG/fig1_activations.png" -- notebooks/20_fig1_activations.ipynb "${LIB[@]}" -- \
  run_notebook 20_fig1_activations.ipynb 20_fig1_activations.ipynb || true
step "figure 2" "$FIG/fig2_convergence.png" "$FIG/figS1_dead_units.png" -- notebooks/21_fig2_convergence.ipynb "$RES/histories.csv" "${LIB[@]}" -- \
  run_notebook 21_fig2_convergence.ipynb 21_fig2_convergence.ipynb || true
step "figure 3" "$FIG/fig3_32ch_full.png" -- notebooks/22_fig3_32ch_full.ipynb "$RES/arrays.npz" "$RES/metrics_per_map.csv" "${LIB[@]}" -- \
  run_notebook 22_fig3_32ch_full.ipynb 22_fig3_32ch_full.ipynb || true
step "figure 4" "$FIG/fig4_16ch_early.png" -- notebooks/23_fig4_16ch_early.ipynb "$RES/arrays.npz" "$RES/metrics_per_map.csv" "${LIB[@]}" -- \
  run_notebook 23_fig4_16ch_early.ipynb 23_fig4_16ch_early.ipynb || true

# ---------------------------------------------------------------- 3. report
render_report() {
  run_notebook 30_report.ipynb 30_report.ipynb -p timings_file "$TIMINGS" &&
  "$PY" -m jupyter nbconvert "$NBOUT/30_report.ipynb" --to html --no-input --embed-images \
      --CoalesceStreamsPreprocessor.enabled=True --output-dir "$NBOUT" --output report_raw --log-level WARN &&
  "$PY" -m qsmrep offline-html "$NBOUT/report_raw.html" "$RES/report.html"
}
step "report" "$RES/report.html" -- notebooks/30_report.ipynb "$FIG"/*.png $(ls "$RES"/sweep_*.csv 2>/dev/null) "$RES/metrics_per_map.csv" "$RES/metrics_summary.csv" \
  "$RES/histories.csv" "$RES/costs.csv" "${LIB[@]}" -- render_report || true

# ---------------------------------------------------------------- summary
TOTAL=$((SECONDS - START))
echo
echo "==> profile $PROFILE finished in $((TOTAL / 60)) min $((TOTAL % 60)) s"
echo "    report:  $RES/report.html"
echo "    figures: $FIG/"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "!!  failed steps: ${FAILED[*]}" >&2
  echo "    finished variants and results are kept; fix the cause and run ./run_all.sh --profile $PROFILE again" >&2
  exit 1
fi
exit 0
}
