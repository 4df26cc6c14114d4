#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repository root, with .whl and .data carried:
#   bash scripts/device_ablation.sh [EPOCHS] [SEEDS...]      (default: 30 epochs, seeds 0 1 2)
#   WIDTHS="16 24 48" bash scripts/device_ablation.sh ...     (also the accuracy-per-LUT widths)
# Installs the carried wheels into /tmp/site, then runs the ablation with every job at once on
# the one GPU, and copies the results (and a log) into $OUT when that is set.
set -uo pipefail
epochs=${1:-30}; shift || true
seeds=${*:-0 1 2}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
t0=$(date +%s)
python3 -m bench.accuracy --device cuda --epochs "$epochs" --seeds $seeds --no-cost \
  ${WIDTHS:+--widths $WIDTHS} \
  --data-dir .data/fashion-mnist --runs-dir /tmp/runs 2>&1 | grep -v "^\[seed" | tail -40
rc=${PIPESTATUS[0]}
echo "[device_ablation] wall $(( $(date +%s) - t0 )) s, exit $rc"
if [[ -n "${OUT:-}" ]]; then
  cp bench/results/accuracy.json bench/results/accuracy.md "$OUT"/ 2>/dev/null
  tar czf "$OUT/finals.tgz" -C /tmp runs --wildcards '*/final.pt' 2>/dev/null || true
fi
exit $rc
