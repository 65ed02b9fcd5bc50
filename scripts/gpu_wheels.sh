#!/usr/bin/env bash
# Download the wheels of scripts/device_wheels.txt for a machine without internet (the lent GPU machine:
# x86-64, CPython 3.12 by default) into .whl/ (git-ignored; carry it: about 45 MiB).
#   scripts/gpu_wheels.sh [PYTHON_VERSION]
# A package published as source only is built here, and kept only when the wheel is pure Python
# (*-none-any.whl, which runs on any Python 3); a wheel built here with compiled code would be for this
# machine's Python, not the device's, so it is refused and named.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-3.12}"
mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
BUILT="$(mktemp -d)"
trap 'rm -rf "$BUILT"' EXIT
pure_wheel() {  # pure_wheel PIN: build PIN here into .whl/ if its wheel is pure Python
  rm -f "$BUILT"/*.whl
  python3 -m pip wheel --quiet --no-deps -w "$BUILT" "$1" 2>/dev/null || return 1
  local wheel
  for wheel in "$BUILT"/*.whl; do
    case "$wheel" in
      *-none-any.whl) mv "$wheel" .whl/ ;;
      *) echo "error: $1 has no wheel for CPython $VERSION, and the one built here ($(basename "$wheel")) is for this machine's Python" >&2; return 1 ;;
    esac
  done
}
FAILED=()
for pin in $(grep -v '^#' scripts/device_wheels.txt); do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$pin" 2>/dev/null \
    || pure_wheel "$pin" \
    || FAILED+=("$pin")
done
[ ${#FAILED[@]} = 0 ] || { echo "error: no wheel for: ${FAILED[*]}" >&2; exit 1; }
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
