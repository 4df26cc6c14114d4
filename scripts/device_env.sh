# Sourced by scripts/device_ablation.sh and scripts/device_teachers.sh (not run on its own):
# the setup both need on the GPU machine. Expects $py (the Python), $out (where results go), $t0
# (the start time) and $logname (device_ablation, say); defines log MESSAGE..., which prints
# "[$logname <seconds>s] MESSAGE" and appends it to $out/<$logname without "device_">.log.
# Installs the carried wheels (.whl, scripts/device_prepare.sh) into /tmp/site where brevitas is
# missing, and exports what every training job needs.
mkdir -p "$out"
log() { echo "[$logname $(( $(date +%s) - t0 ))s] $*" | tee -a "$out/${logname#device_}.log"; }
if [[ -d .whl ]] && ! "$py" -c "import brevitas" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
# compile workers: two per job, not one per core per job
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-2}
