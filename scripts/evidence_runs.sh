#!/usr/bin/env bash
# The third-seed evidence runs (configs/experiments/README.md): two lanes, niced, one thread each,
# each run resumed where it stopped. Re-run this script after any interruption.
#   nohup bash scripts/evidence_runs.sh > runs/evidence.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TEACHER=runs/fmnist_teacher_sgdclip_e30_s0/teacher/final.pt
# the SGD teacher the runs distil from is the shipped one (same file, metrics and experiment name)
if [[ ! -f $TEACHER ]]; then
  mkdir -p "$(dirname $TEACHER)" && cp quant_models/pretrained/si_resnet_fp_fmnist.pt "$TEACHER"
fi
run() {  # run EXPERIMENT CONFIG [--set ...]: train to completion, resuming an existing run
  local exp=$1 cfg=$2; shift 2
  [[ -f runs/$exp/student/final.pt ]] && { echo "$exp: done"; return 0; }
  local resume=(); [[ -f runs/$exp/config.yaml ]] && resume=(--resume)
  echo "$(date -u +%FT%TZ) $exp: start ${resume[*]}"
  nice -n 19 $PY -m quant_models.train.cli --config "$cfg" --set experiment="$exp" "$@" \
    --set progress=false "${resume[@]}"
  echo "$(date -u +%FT%TZ) $exp: exit $?"
}
E=configs/experiments
lane_a() {
  run fmnist_student_sgd_teacher_s2 $E/fmnist_student_sgd_teacher.yaml --set seed=2 --set compile=true
  run fmnist_plain_sgd_teacher_s2 $E/fmnist_student_sgd_teacher.yaml --set seed=2 \
    --set stages.student.student=resnet_w1a1_mbh --set compile=true
}
lane_b() {
  run fmnist_plain_ce_sgd_teacher_s2 $E/fmnist_plain_ce_sgd_teacher.yaml --set seed=2 --set compile=true
  run fmnist_plain_sgd_teacher_s1 $E/fmnist_student_sgd_teacher.yaml --set seed=1 \
    --set stages.student.student=resnet_w1a1_mbh --set compile=true
}
lane_a > runs/evidence_a.log 2>&1 &
lane_b > runs/evidence_b.log 2>&1 &
wait
