#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repository root, with .whl and .data carried
# (scripts/device_prepare.sh makes both here): a sweep of FP teacher recipes for the >= 93% goal,
# every (recipe, seed) at once on the one GPU, compiled (checked against eager: the FP teacher
# compiled correctly on the H200, 2 s/epoch for 3 at once):
#   bash scripts/device_teachers.sh [SEEDS...]                (default seeds 0 1)
# Environment:
#   RECIPES="name:override,override name:..."  the recipes, each a name and --set overrides over
#       configs/fmnist_teacher.yaml (default: 60 epochs alone, with cutout 8, with label
#       smoothing 0.1, with both, and 60 epochs of SGD with Nesterov momentum 0.9, lr 0.1,
#       weight decay 5e-4 on the conv/FC weights, gradient norm clipped to 1: the usual CIFAR
#       ResNet recipe, where AdamW is often a few tenths worse; unclipped it diverged on CPU,
#       loss NaN in the first epoch, see configs/experiments/README.md)
#   EXTRA="key=value ..."     overrides for every run (dry runs: data.name=digits ...)
#   DEADLINE=280              seconds after which the runs are stopped (each keeps its last epoch)
#   DEVICE=cuda, PYTHON=python3, OUT, RUNS_DIR as in scripts/device_ablation.sh
# Writes $OUT/teachers.json (per recipe and seed: val and test accuracy of the best-val epoch...
# as the recipe selects, epochs done) and $OUT/teachers.tgz (every final.pt and metrics.jsonl).
# Val decides; test is reported.
set -uo pipefail
seeds=${*:-0 1}
device=${DEVICE:-cuda}
deadline=${DEADLINE:-280}
py=${PYTHON:-python3}
runs=${RUNS_DIR:-/tmp/teacher_runs}
out=${OUT:-/tmp/device_out}
recipes=${RECIPES:-"e60:stages.teacher.epochs=60 e60_cut8:stages.teacher.epochs=60,data.cutout=8 e60_ls:stages.teacher.epochs=60,stages.teacher.loss_weights.label_smoothing=0.1 e60_cut8_ls:stages.teacher.epochs=60,data.cutout=8,stages.teacher.loss_weights.label_smoothing=0.1 e60_sgd:stages.teacher.epochs=60,stages.teacher.optimizer=sgd,stages.teacher.lr=0.1,stages.teacher.weight_decay=0.0005,stages.teacher.grad_clip=1.0"}
mkdir -p "$runs"
t0=$(date +%s)
logname=device_teachers
source "$(dirname "$0")/device_env.sh"   # wheels, exports, log
data=()
[[ -d .data/fashion-mnist ]] && data=(--data-dir .data/fashion-mnist)

pids=()
for r in $recipes; do
  name=${r%%:*}; sets=${r#*:}
  for seed in $seeds; do
    args=(--config configs/fmnist_teacher.yaml --out-dir "$runs" "${data[@]}"
          --set "experiment=teacher_${name}_s${seed}" --set "seed=$seed" --set "device=$device"
          --set compile=true --set progress=false --set num_threads=1)
    IFS=, read -ra kv <<< "$sets"
    for s in "${kv[@]}" ${EXTRA:-}; do args+=(--set "$s"); done
    resume=(); [[ -f "$runs/teacher_${name}_s${seed}/config.yaml" ]] && resume=(--resume)
    "$py" -m quant_models.train.cli "${args[@]}" "${resume[@]}" \
      > "$out/teacher_${name}_s${seed}.log" 2>&1 &
    pids+=($!)
  done
done
log "${#pids[@]} runs started"
left=$(( deadline - ($(date +%s) - t0) ))
( sleep "$left"; kill -INT "${pids[@]}" 2>/dev/null ) & killer=$!
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
kill $killer 2>/dev/null
"$py" - "$runs" "$out/teachers.json" <<'EOF'
import json, sys
from pathlib import Path
runs, res = Path(sys.argv[1]), {}
for m in sorted(runs.glob("teacher_*_s*/teacher/metrics.jsonl")):
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    final = next((r for r in rows if r.get("final")), None)
    name, seed = m.parts[-3].removeprefix("teacher_").rsplit("_s", 1)
    epochs = [r for r in rows if not r.get("final")]
    res.setdefault(name, {})[seed] = (
        {k: final.get(k) for k in ("val_acc", "test_acc", "selected_epoch", "epochs",
                                   "train_time_s")} if final else
        {"epochs_done": len(epochs), "last_val_acc": epochs[-1]["val_acc"] if epochs else None})
Path(sys.argv[2]).write_text(json.dumps(res, indent=2) + "\n")
for name, seeds in res.items():
    print(name, {s: (r.get("val_acc"), r.get("test_acc")) if "val_acc" in r else r
                 for s, r in seeds.items()})
EOF
(cd "$runs" && find . -name final.pt -o -name metrics.jsonl -o -name config.yaml |
   tar czf "$out/teachers.tgz" -T -) 2>/dev/null
grep -h "compiled step\|compile failed\|Error" "$out"/teacher_*.log | sort | uniq -c
log "wall $(( $(date +%s) - t0 )) s, exit $rc"
exit $rc
