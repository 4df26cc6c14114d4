#!/usr/bin/env bash
# finn-hlslib for cppsim with g++ (flow/sim/cppsim.py), where FINN itself looks for it:
# $FINN_DEPS/finn-hlslib (default deps/), at the commit finn-plus pins in
# finn/interface/external_dependencies.yaml. Needs network access to GitHub, or
# HLSLIB_SRC=<a local git clone or mirror of Xilinx/finn-hlslib> (then the pinned commit is used
# when the mirror has it, else its HEAD, and the report says which commit cppsim compiled with).
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=${FINN_DEPS:-deps}
DEST="$DEPS/finn-hlslib"
PY=${VENV:-.venv}/bin/python
PIN=$("$PY" -c "from flow.sim.cppsim import pinned_hlslib_commit; print(pinned_hlslib_commit())")
SRC=${HLSLIB_SRC:-https://github.com/Xilinx/finn-hlslib.git}
if [[ -f "$DEST/bnn-library.h" ]]; then
  echo "[deps] finn-hlslib already in $DEST ($(cat "$DEST/.sibnn-commit" 2>/dev/null || echo '?'))"
  exit 0
fi
mkdir -p "$DEPS"
tmp=$(mktemp -d "$DEPS/.finn-hlslib.XXXX")
trap 'rm -rf "$tmp"' EXIT
if ! git clone -q "$SRC" "$tmp/src" 2>"$tmp/err"; then
  echo "error: cannot clone finn-hlslib from $SRC ($(tail -1 "$tmp/err")); on a machine without" \
       "GitHub access set HLSLIB_SRC to a local clone" >&2
  exit 1
fi
if git -C "$tmp/src" checkout -q "$PIN" 2>/dev/null; then
  commit=$PIN
else
  commit=$(git -C "$tmp/src" rev-parse HEAD)
  echo "[deps] warning: $SRC lacks finn-plus' pinned commit $PIN; using $commit" >&2
fi
git -C "$tmp/src" archive HEAD | (mkdir "$tmp/out" && tar -x -C "$tmp/out")
echo "$commit" > "$tmp/out/.sibnn-commit"
mv "$tmp/out" "$DEST"
echo "[deps] finn-hlslib $commit -> $DEST"
