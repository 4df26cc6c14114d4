#!/usr/bin/env bash
# Create .venv/ with the pinned sibnn environment. Idempotent: a stamp file records the hash of
# the pins, so a second run with unchanged pins installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.sibnn-installed"
want=$(cat requirements.txt scripts/install.sh pyproject.toml | sha256sum | cut -d' ' -f1)
AP_TYPES=${SIBNN_AP_TYPES:-deps/ap_types}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$AP_TYPES/ap_int.h" ]]; then
  exit 0
fi
echo "[install] creating $VENV (torch 2.13.0 CPU, finn-plus 1.6.1, brevitas 0.13.4) ..."
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# a venv whose creation was interrupted (no pip yet, no stamp) is made again, not reused broken
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PY" -m venv --clear "$VENV"
PIP=(pip_quiet "$VENV/bin/python" -m pip --disable-pip-version-check -q)
# pip on some machines warns about configured local indexes that do not exist; keep the log clean
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
"${PIP[@]}" install --upgrade pip
# TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) avoids the multi-GB CUDA wheel on
# machines without a local torch file; see Dockerfile.
"${PIP[@]}" install "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple}
"${PIP[@]}" install --no-deps "finn-plus==1.6.1"
"${PIP[@]}" install -r requirements.txt
"${PIP[@]}" install --no-deps -e .
"$VENV/bin/python" -c "import torch, brevitas, finn, qonnx, onnxruntime; print('[install] ok: torch', torch.__version__, 'brevitas', brevitas.__version__)"
# Open ap_int/hls_stream headers for cppsim with g++ (flow/sim/cppsim.py): the hls4ml wheel ships
# them (hls4ml/templates/vivado/ap_types). Only the wheel is downloaded, nothing is installed.
if [[ ! -f "$AP_TYPES/ap_int.h" ]]; then
  tmp=$(mktemp -d)
  "${PIP[@]}" download --no-deps --only-binary=:all: "hls4ml==1.3.0" -d "$tmp"
  "$VENV/bin/python" - "$tmp" "$AP_TYPES" <<'PYEOF'
import pathlib, sys, zipfile
whl = next(pathlib.Path(sys.argv[1]).glob("hls4ml-*.whl"))
dest, part = pathlib.Path(sys.argv[2]), "hls4ml/templates/vivado/ap_types/"
stage = dest.with_name(dest.name + ".tmp")
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(part) and not name.endswith("/"):
            f = stage / name[len(part):]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(z.read(name))
stage.rename(dest)
PYEOF
  rm -rf "$tmp"
  echo "[install] ap_types headers (hls4ml 1.3.0 wheel) -> $AP_TYPES"
fi
echo "$want" > "$STAMP"
