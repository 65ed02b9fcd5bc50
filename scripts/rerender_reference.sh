#!/usr/bin/env bash
# Re-render a committed reference from its committed tables, without its run folders (checkpoints are git-ignored):
# the baselines are re-scored from the generator (qsmrep.study.rescore), Figure 2 and S1 are redrawn from
# histories.csv, and the report is rendered again. Figures 3 and 4 need the networks' predictions (arrays.npz,
# made from the checkpoints) and are kept as they are; the report says so.
#   scripts/rerender_reference.sh [PROFILE] [ARMS] [SEEDS]      default: cpu-long batch,none 3
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/ensure_env.sh"
cd "$ROOT"
PROFILE=${1:-cpu-long} ARMS=${2:-batch,none} SEEDS=${3:-3}
RES=results/$PROFILE NB=results/$PROFILE/notebooks REF=reference/$PROFILE
[ -f "$REF/metrics_per_map.csv" ] || { echo "error: no committed tables in $REF" >&2; exit 2; }
# the scale the tables were made at (its maps, epochs, early checkpoint), which the profile may no longer have
[ -f "$REF/study_config.yaml" ] || { echo "error: $REF/study_config.yaml is missing: the tables' scale is unknown" >&2; exit 2; }
# the reference's tables, benchmarks and figures into the (git-ignored) working folders, over what a run left there;
# re-rendered there, then published back into $REF by the one command that writes it
mkdir -p "$RES" "figures/$PROFILE" && cp "$REF"/*.csv "$REF"/study_config.yaml "$RES"/ && cp -r "$REF/benchmarks" "$RES"/ && cp "$REF"/figures/* "figures/$PROFILE"/
[ ! -f "$RES/arrays.npz" ] || echo "note: $RES/arrays.npz exists: a full re-evaluation (./run_all.sh) would redraw every figure" >&2
mkdir -p "$NB"
"$PY" -c "from qsmrep.study.plan import study_config; from qsmrep.study.rescore import rescore_baselines; \
print('baselines chosen on the validation maps:', rescore_baselines('$RES', study_config('$PROFILE')))"
for notebook in 21_fig2_convergence 30_report; do
  extra=(-p arms "$ARMS"); [ "$notebook" = 30_report ] && extra+=(-p seeds "$SEEDS")
  "$PY" -m papermill "notebooks/$notebook.ipynb" "$NB/$notebook.ipynb" -k qsmrep --cwd . --log-output --no-progress-bar \
    -p profile "$PROFILE" "${extra[@]}" > "$NB/$notebook.log" 2>&1 || { tail -n 30 "$NB/$notebook.log" >&2; exit 1; }
done
"$PY" -m nbconvert "$NB/30_report.ipynb" --to html --no-input --embed-images --CoalesceStreamsPreprocessor.enabled=True \
  --output-dir "$NB" --output report_raw --log-level WARN
"$PY" -m qsmrep offline-html "$NB/report_raw.html" "$RES/report.html"
"$PY" -m qsmrep publish-reference --profile "$PROFILE"
echo "==> $REF/report.html re-rendered from the committed tables"
