#!/usr/bin/env bash
# One sitting of a study too long for one (the cpu-long reference: 36 trainings, 16-30 h on two cores), on a machine
# that keeps nothing but the repository between sittings:
#   1. restores the study's finished runs kept in reference/<profile>/trained/ (python -m qsmrep unshelve);
#   2. trains the runs still to do, the widest (longest) first, --jobs at a time, each on --threads threads (default:
#      the cores split between the jobs; python -m qsmrep status --todo; one 'python -m qsmrep job train' each);
#   3. after each finished training, keeps every finished run in reference/<profile>/trained/ without weights
#      (python -m qsmrep shelve, which scores the new run's checkpoints first), so that a sitting cut off at any
#      moment loses only the trainings in progress. Commit reference/<profile>/trained/ before the machine goes.
# When no training is left, ./run_all.sh with the same options evaluates, draws and renders the report.
#   scripts/train_sitting.sh --profile cpu-long --arm batch --seeds 3 --jobs 2
#   scripts/train_sitting.sh --profile cpu-long --arm none --seeds 3 --jobs 1 --threads 1   # beside other work
set -euo pipefail
die() { echo "train_sitting.sh: error: $*" >&2; exit 2; }
PROFILE=cpu ARM= SEEDS=1 JOBS=1 THREADS=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --profile|--arm|--seeds|--jobs|--threads) [ $# -ge 2 ] || die "$1 needs a value"; declare "$(tr a-z A-Z <<< "${1#--}")=$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | cut -c3-; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
positive() { [[ "${!1}" =~ ^[1-9][0-9]*$ ]] || die "--${1,,} must be a positive integer, got '${!1}'"; }
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone follows the OpenMP variables
positive SEEDS; positive JOBS; [ "$THREADS" != auto ] || THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 )); positive THREADS
source "$(cd "$(dirname "$0")" && pwd)/ensure_env.sh"
cd "$ROOT"
"$PY" -m qsmrep.registry profile "$PROFILE" || exit 2
ARMS=$("$PY" -m qsmrep.registry arm "$ARM") || exit 2
STUDY=(--profile "$PROFILE" --arms "$ARMS" --seeds "$SEEDS")
mkdir -p "results/$PROFILE" && exec 9>"results/$PROFILE/.lock"
flock -n 9 || die "another run_all.sh or sitting is writing results/$PROFILE (lock results/$PROFILE/.lock)"
"$PY" -m qsmrep unshelve "${STUDY[@]}"
mapfile -t TODO < <("$PY" -m qsmrep status "${STUDY[@]}" --todo)
echo "==> $(date -u +%H:%M) UTC: ${#TODO[@]} trainings to do, $JOBS at a time: ${TODO[*]:-none}"
[ ${#TODO[@]} -gt 0 ] || exit 0
echo "    threads per training: $THREADS ($CORES cores)"
export PY PROFILE OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# each job: train, then shelve under a lock of its own (two finishing at once must not copy the same run together)
printf '%s\n' "${TODO[@]}" | xargs -P "$JOBS" -I{} sh -c \
  '"$PY" -m qsmrep job train "$1" --profile "$PROFILE" && flock "results/$PROFILE/.shelf.lock" "$PY" -m qsmrep shelve --profile "$PROFILE"' \
  _ {} || { echo "!!  some trainings failed or were stopped (above); what finished is kept in reference/$PROFILE/trained/" >&2; exit 1; }
echo "==> every training of the study is done: ./run_all.sh --profile $PROFILE${ARM:+ --arm $ARM} --seeds $SEEDS evaluates and renders it"
