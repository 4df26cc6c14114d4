#!/usr/bin/env bash
# Prepare what the GPU machine lacks for `bench.accuracy --device cuda` (it has Python 3.12 with
# torch + CUDA, numpy, pyyaml, tqdm, sympy, packaging, but no brevitas): the wheels under .whl/
# and the Fashion-MNIST IDX files under .data/fashion-mnist/, both git-ignored via
# .git/info/exclude. Run here (with registry access), then carry .whl and .data to the device and
# run scripts/device_ablation.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.data/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .data/fashion-mnist
PY=${PYTHON:-python3}
# pure-Python wheels, pinned like requirements.txt; setuptools<81 because brevitas imports pkg_resources
for spec in brevitas==0.13.4 dependencies==2.0.1 unfoldNd==0.2.3 setuptools==80.9.0; do
  name=${spec%%==*}
  ls .whl/ | grep -qi "^${name//-/_}-${spec##*==}-" && continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform any -d .whl "$spec"
done
src=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
cp -n "$src"/*-ubyte* .data/fashion-mnist/
du -sh .whl .data | sed 's/^/[device_prepare] /'
