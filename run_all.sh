#!/usr/bin/env bash
# The whole reproduction for one profile: set-up if needed, then the Snakemake workflow (workflow/Snakefile):
# train the six variants per arm and seed, evaluate, draw Figures 1-4, render results/<profile>/report.html.
# Steps rerun when an input is newer (make-style mtimes), interrupted training resumes; the block is read whole first.
{
set -euo pipefail
usage() { cat <<'USAGE'
usage: ./run_all.sh [--profile P] [--arm A] [--seeds N] [--jobs N] [--executor E] [--extended] [--guard] [--clip] [--widths W] [--force] [--dry-run]
  --profile P   smoke (tests, ~3 min), cpu (default; 2-core CPU), gpu (one GPU, minutes), paper (GPU, hours per model)
  --arm A       batch (default: batch normalisation), none (the standard U-Net of the paper) or both
  --seeds N     train every variant with seeds 0..N-1 (default 1)
  --jobs N      run N steps at once (CPU threads are split between them; on several GPUs one GPU each; on a cluster: jobs)
  --executor E  slurm: each step a job of this SLURM cluster, asking for this machine's cores (workflow/profiles/slurm/)
  --extended    also the activation sweep at 16 channels (default arm)
  --guard       also fp32 twins of seed 0 for the accuracy guard of the fast precision
  --clip        also gradient-clipped twins (global norm 1) of seed 0 of the standard U-Net (arm none)
  --widths W    the twins (--guard, --clip) only at these initial channels, e.g. 16 (default: all)
  --force       redo every step, retraining from scratch (otherwise finished steps are skipped)
  --dry-run     show what would run, and why, without running it
USAGE
}
die() { echo "run_all.sh: error: $*" >&2; exit 2; }
PROFILE=cpu ARM= SEEDS=1 JOBS= EXECUTOR= WIDTHS= EXTENDED=0 GUARD=0 CLIP=0 FORCE=0 DRY=() QUIET=(--quiet rules host)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile|--arm|--seeds|--jobs|--executor|--widths) [ $# -ge 2 ] || die "$1 needs a value"; declare "$(tr a-z A-Z <<< "${1#--}")=$2"; shift 2 ;;
    --profile=*|--arm=*|--seeds=*|--jobs=*|--executor=*|--widths=*) name="${1%%=*}"; declare "$(tr a-z A-Z <<< "${name#--}")=${1#*=}"; shift ;;
    --extended|--guard|--clip|--force) declare "$(tr a-z A-Z <<< "${1#--}")=1"; shift ;;
    --dry-run|-n) DRY=(--dry-run) QUIET=(); shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
cd "$(dirname "$0")"
python3 -m qsmrep.registry profile "$PROFILE" && python3 -m qsmrep.registry widths "$WIDTHS" || exit 2
ARMS=$(python3 -m qsmrep.registry arm "$ARM") || exit 2  # comma-separated; --arm both: every arm, none given: the default
for n in SEEDS ${JOBS:+JOBS}; do [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "--${n,,} must be a positive integer, got '${!n}'"; done
[[ -z $EXECUTOR || -f workflow/profiles/$EXECUTOR/config.yaml ]] || die "--executor: no profile workflow/profiles/$EXECUTOR/ (there are: $(ls workflow/profiles | xargs))"
[[ $CLIP = 0 || $ARMS = *none* ]] || die "--clip twins the standard U-Net: use it with --arm none or --arm both"
source scripts/ensure_env.sh
mkdir -p "results/$PROFILE/notebooks" && exec 9>"results/$PROFILE/.lock"
flock -n 9 || die "another run_all.sh is writing results/$PROFILE (lock results/$PROFILE/.lock); wait for it to finish"
[ "$PROFILE" != paper ] || [ ${#DRY[@]} -gt 0 ] || "$PY" -m qsmrep estimate --profile paper --arms "$ARMS" || exit 2
GPUS=0 CORES=$(nproc) WHERE=(--workflow-profile "workflow/profiles/$EXECUTOR" ${JOBS:+--jobs "$JOBS"}); JOBS=${JOBS:-1}
if [ -z "$EXECUTOR" ]; then [ "$JOBS" -gt 1 ] && command -v nvidia-smi >/dev/null && GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 )); WHERE=(--cores $(( THREADS * JOBS )) --resources gpu="$GPUS")
else THREADS=$CORES QUIET=(${QUIET[@]:+--quiet host}); "$PY" -c "import snakemake_executor_plugin_$EXECUTOR" 2>/dev/null || die "--executor $EXECUTOR needs: $PY -m pip install snakemake-executor-plugin-$EXECUTOR"; fi
[ "$FORCE" = 1 ] || "$PY" -m qsmrep unshelve --profile "$PROFILE" --arms "$ARMS" --seeds "$SEEDS" ${WIDTHS:+--widths "$WIDTHS"} $(for f in EXTENDED GUARD CLIP; do [ "${!f}" = 0 ] || echo "--${f,,}"; done) "${DRY[@]}" || exit 2  # runs kept in reference/$PROFILE/trained/
STATUS=0 INTERRUPTED=0; trap 'INTERRUPTED=1' INT TERM  # Ctrl-C reaches snakemake and the trainings; report it after
"$PY" -m snakemake --snakefile workflow/Snakefile --directory . "${WHERE[@]}" --nolock \
  --keep-going --rerun-incomplete --max-checksum-file-size 0 "${QUIET[@]}" "${DRY[@]}" $([ "$FORCE" = 1 ] && echo --forceall) \
  --config profile="$PROFILE" arms="$ARMS" seeds="$SEEDS" extended="$EXTENDED" guard="$GUARD" clip="$CLIP" widths="$WIDTHS" force="$FORCE" gpus="$GPUS" threads="$THREADS" \
  || STATUS=$?
[ ${#DRY[@]} -gt 0 ] && exit "$STATUS"
[ "$INTERRUPTED" = 0 ] || { echo "!!  interrupted: finished steps and epochs are kept; run the same command again to resume" >&2; exit 130; }
echo "==> profile $PROFILE: report results/$PROFILE/report.html, figures figures/$PROFILE/ (exit $STATUS)"
[ "$STATUS" = 0 ] || echo "!!  some steps failed (above); finished runs and results are kept; fix the cause and run again" >&2
exit "$STATUS"
}
