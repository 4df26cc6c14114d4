#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repository root, with .whl and .data carried
# (scripts/device_prepare.sh makes both here):
#   bash scripts/device_ablation.sh [EPOCHS] [SEEDS...]      (default: 30 epochs, seeds 0 1 2)
# Environment:
#   VARIANTS="teacher ..."    train only these, of flow.studies.VARIANTS (a later run of more
#                             extends the run). Default: the first five and mbh_ce, the shipped
#                             network trained with CE only (teacher plain mbh si_h_mbh si_h_mbh_ds
#                             mbh_ce: its students are CE steps, cheaper), what one 10-minute call
#                             can finish: on the H200 the 24 students of all variants ran at about
#                             350 steps/s in all (compiled; the convolutions bound it), i.e. about
#                             7.5 min for 30 epochs, more eager. VARIANTS="teacher plain mbh
#                             si_h_mbh si_h_mbh_ds full kd si_kd si_h" then adds the rest
#   WIDTHS="16 24 48"         also the accuracy-per-LUT widths
#   DEADLINE=540              seconds after which the jobs are stopped (they resume from their
#                             last epoch on a rerun of this script on the same machine)
#   COMPILE=0                 1: torch.compile every step, each compiled step checked against
#                             the eager one on a batch first (quant_models.train.compile_check.
#                             checked_compile). On the H200 (torch 2.11) the compiled students
#                             had wrong gradients (rejected now), the FP teacher was right at
#                             2 s/epoch; the students' compile costs ~100 s for nothing
#   TEACHER_COMPILE=1         train the teachers first, compiled (they matched eager there)
#   DATASET, SUBSET, VAL_SIZE --dataset (default fmnist), --train-subset, --val-size (dry runs)
#   DEVICE=cuda               cpu for a dry run of this script here (with PYTHON=.venv/bin/python
#                             and RESULTS_DIR=/tmp/..., so that bench/results stays as it is)
# Installs the carried wheels into /tmp/site, starts CUDA MPS when the machine has it (kernels of
# the concurrent jobs then share the GPU instead of taking turns), runs the ablation with every
# job at once on the one GPU, falls back to eager steps for the jobs left if a compiled job
# fails, and copies the results, a log and the checkpoints into $OUT when that is set.
set -uo pipefail
epochs=${1:-30}; shift || true
seeds=${*:-0 1 2}
device=${DEVICE:-cuda}
deadline=${DEADLINE:-540}
variants=${VARIANTS:-teacher plain mbh si_h_mbh si_h_mbh_ds mbh_ce}
runs=${RUNS_DIR:-/tmp/runs}
results=${RESULTS_DIR:-bench/results}
py=${PYTHON:-python3}
out=${OUT:-/tmp/device_out}
mkdir -p "$runs"
t0=$(date +%s)
logname=device_ablation
source "$(dirname "$0")/device_env.sh"   # wheels, exports, log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$py" -c "import torch, brevitas; print('torch', torch.__version__, 'brevitas', brevitas.__version__)"

if [[ $device == cuda* ]] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d 2>/dev/null &&
     timeout 60 "$py" -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    log "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    log "MPS unavailable: the jobs take turns on the GPU"
  fi
fi

data=()
[[ -d .data/fashion-mnist && ${DATASET:-fmnist} == fmnist ]] && data=(--data-dir .data/fashion-mnist)
run_ablation() {  # $1: extra flags; stops at the deadline
  local left=$(( deadline - ($(date +%s) - t0) ))
  (( left > 20 )) || return 124
  log "ablation $* ($left s left)"
  timeout -s INT -k 15 "$left" "$py" -m bench.accuracy --device "$device" --epochs "$epochs" \
    --seeds $seeds --variants $variants --no-cost ${WIDTHS:+--widths $WIDTHS} \
    ${SUBSET:+--train-subset $SUBSET} ${DATASET:+--dataset $DATASET} \
    ${VAL_SIZE:+--val-size $VAL_SIZE} "${data[@]}" --runs-dir "$runs" --results-dir "$results" "$@" \
    > >(tee -a "$out/ablation.log" | grep --line-buffered -E "done:|Error|error|failed|goal|Traceback|MISSED|met" ) 2>&1
}
copy_out() {
  cp "$results"/accuracy.json "$results"/accuracy.md "$out"/ 2>/dev/null
  # every stage's metrics, and the final weights (about 1 MB each) in two archives under the
  # device tool's 16 MiB per file: the teachers and the shipped student's variant, then the rest
  (cd "$runs" && { find . -name metrics.jsonl; find . -path "*/teacher/final.pt" \
     -o -path "*/si_h_mbh/final.pt"; } | tar czf "$out/runs.tgz" -T -) 2>/dev/null
  (cd "$runs" && find . -name final.pt ! -path "*/teacher/*" ! -path "*/si_h_mbh/*" |
     tar czf "$out/finals.tgz" -T -) 2>/dev/null
}
( while sleep 30; do copy_out; done ) & copier=$!

rc=1
if [[ ${TEACHER_COMPILE:-1} == 1 && " $variants " == *" teacher "* ]]; then
  # the teachers first, compiled (checked; 2 s/epoch on the H200): the stage list of this run is a
  # prefix of the full one, which then resumes it
  variants_all=$variants; variants=teacher
  run_ablation --compile; rc=$?
  variants=$variants_all
  (( rc == 0 )) || log "teacher run ended with $rc"
fi
if [[ ${COMPILE:-0} != 1 ]] && (( rc != 124 )); then run_ablation; rc=$?; fi
if [[ ${COMPILE:-0} == 1 ]]; then
  run_ablation --compile; rc=$?
  (( rc == 0 )) || log "compiled run ended with $rc"
fi
if [[ ${COMPILE:-0} == 1 ]] && (( rc != 0 && rc != 124 )); then
  run_ablation; rc=$?   # eager, resuming what the compiled jobs left
fi
kill $copier 2>/dev/null
copy_out
log "wall $(( $(date +%s) - t0 )) s, exit $rc"
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null
exit $rc
