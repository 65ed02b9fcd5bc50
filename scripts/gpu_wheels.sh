#!/usr/bin/env bash
# Download the wheels of scripts/device_wheels.txt for a machine without internet (the lent GPU machine:
# x86-64, CPython 3.12 by default) into .whl/ (git-ignored; carry it: about 45 MiB).
#   scripts/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-3.12}"
mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
FAILED=()
for pin in $(grep -v '^#' scripts/device_wheels.txt); do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$pin" 2>/dev/null \
    || python3 -m pip wheel --quiet --no-deps -w .whl "$pin" 2>/dev/null \
    || FAILED+=("$pin")  # pure-Python packages published as source only are built here
done
[ ${#FAILED[@]} = 0 ] || { echo "error: no wheel for: ${FAILED[*]}" >&2; exit 1; }
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
