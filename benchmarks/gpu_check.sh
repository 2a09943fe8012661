#!/usr/bin/env bash
# The GPU check of the sparse path in two device slots of at most 8 minutes each ("correctness", then
# "speed"): correctness of every backend (Pallas, JAX, dense, auto) against a float64 host oracle and of
# whole sparse models against the dense forward; the block tables of benchmarks/sparse_conv.py --gpu
# (bf16 and f32), Pallas tile configurations, the paper AdaEDSR x2 at 30% / 50% executed MACs against
# XLA's dense forward, and the paper training step. The limits are sized from the H200 runs recorded in
# benchmarks/RESULTS.md ("GPU"), where XLA's and Triton's compiles, not the runs, took most of the time.
#
#   OUT=results/gpu bash benchmarks/gpu_check.sh correctness     # env, kernels, models
#   OUT=results/gpu bash benchmarks/gpu_check.sh speed           # block tables, tune, speed, train
#   OUT=results/gpu bash benchmarks/gpu_check.sh kernels tune    # single sections
#
# Runs from the repository root with the machine's own python3 (PYTHON=... to change) and the repo on
# PYTHONPATH: it installs nothing from a registry. Wheels in .whl/ (ml_collections, which the training
# step's config imports; flax, used only where the machine's flax is older than 0.12) go to /tmp/site.
# Each section is its own process under its own time limit, so a crash or a timeout costs one section;
# everything is logged to $OUT/gpu_check.log and each section writes $OUT/<section>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/adadsr_jax_cache
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if compgen -G ".whl/ml_collections-*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/ml_collections-*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if compgen -G ".whl/flax-*.whl" >/dev/null &&
  ! $PY -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:2])) < (0, 12))"; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/flax .whl/flax-*.whl
  export PYTHONPATH=/tmp/flax:$PYTHONPATH
fi

section() {  # name, time limit (s), command line (run by bash)
  local name=$1 limit=$2
  echo "=== $name (limit ${limit} s) $(date -u +%T); load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOG"
  timeout -k 5 "$limit" bash -o pipefail -c "$3" 2>&1 | tee -a "$LOG"
  echo "=== $name exit ${PIPESTATUS[0]} $(date -u +%T)" | tee -a "$LOG"
}

block="$PY benchmarks/sparse_conv.py --gpu --only block --channels 64 256 --sizes 500 --reps 10 \
  --fractions 0.1 0.3 0.5 0.7 0.9"
versions="import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
  'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
sections=()
for arg in "${@:-correctness}"; do
  case $arg in
    correctness) sections+=(env kernels models) ;;
    speed) sections+=(block_bfloat16 block_float32 tune speed_models train) ;;
    *) sections+=("$arg") ;;
  esac
done
for s in "${sections[@]}"; do
  case $s in
    env) section env 30 "nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; \
      uptime; $PY -c \"$versions\"" ;;
    # Correctness needs no tuned conv algorithms: XLA's autotuning off shortens the compiles.
    kernels) section kernels 220 "XLA_FLAGS=--xla_gpu_autotune_level=0 $PY benchmarks/gpu_check.py kernels \
      --out $OUT" ;;
    models) section models 220 "XLA_FLAGS=--xla_gpu_autotune_level=0 $PY benchmarks/gpu_check.py models \
      --out $OUT" ;;
    block_bfloat16) section block_bfloat16 75 "$block --dtype bfloat16 --out $OUT/block_bfloat16.json" ;;
    block_float32) section block_float32 75 "$block --dtype float32 --out $OUT/block_float32.json" ;;
    tune) section tune 110 "$PY benchmarks/gpu_check.py tune --out $OUT" ;;
    speed_models) section speed 120 "$PY benchmarks/gpu_check.py speed --sizes 256 --backends auto pallas \
      tiles --out $OUT" ;;
    train) section train 60 "$PY benchmarks/train_step.py --model adaedsr --scale 2 --batch 16 --patch 48 \
      --steps 10 | tee $OUT/train_step.json" ;;
    *) echo "unknown section $s" | tee -a "$LOG" ;;
  esac
done
