#!/usr/bin/env bash
# The GPU checks of this project in one prepared run, for a lent GPU machine (see README: the paper profile on a GPU).
# Runs from the working tree with the machine's own torch (no pip install): PYTHONPATH=. and its python.
#   scripts/gpu_check.sh [OUT]      OUT: folder for the rows and logs (default: $OUT, else gpu_check/)
# Each part has its own time limit, so the whole stays under about 9 minutes:
#   1. the CUDA tests of the renderer (CPU vs CUDA maps agree)                     ≤ 1 min
#   2. python -m qsmrep bench --profile paper --json --save (rows under results/bench/) ≤ 5 min
#   3. one variant of the gpu profile trained end to end (ELU 16, 2000 iterations)   ≤ 3 min
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_synth.py -k cuda > "$OUT/tests_cuda.log" 2>&1; echo "cuda tests rc $?" | tee -a "$OUT/device.txt"
MONAI=$("$PY" -c "import monai" 2>/dev/null && echo "" || echo "--no-monai")
timeout 300 "$PY" -m qsmrep bench --profile paper --json --save $MONAI > "$OUT/bench_paper.jsonl" 2> "$OUT/bench_paper.log"; echo "bench rc $?" | tee -a "$OUT/device.txt"
cp results/bench/*.jsonl "$OUT/" 2>/dev/null
timeout 180 "$PY" -m qsmrep train --profile gpu --activation elu --channels 16 --out "$OUT/gpu_elu16" --no-progress > "$OUT/train_gpu.log" 2>&1; echo "gpu-profile training rc $?" | tee -a "$OUT/device.txt"
cp "$OUT/gpu_elu16/history.csv" "$OUT/gpu_elu16_history.csv" 2>/dev/null
rm -rf "$OUT/gpu_elu16"
