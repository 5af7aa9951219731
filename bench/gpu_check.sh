#!/usr/bin/env bash
# The CUDA path end to end on a GPU machine whose python3 has PyTorch with CUDA: frontier runs
# under fp32 (TF32) and bf16 autocast, step timings (bench/gpu.py), one epoch of the loop
# against as many bare steps (bench/loop_overhead.py), the test suite with the
# GPU visible, and runs too slow for a 2-core CPU. Beside them, on pairs of the host CPU's
# cores that the GPU steps leave alone, `fast` as 2-core CPU runs (its CPU class: see
# info.log): seed 1 at `auto` precision (cpu-fast, the timed one: cores 0-1), and with
# cpu-fast-more seeds 2 and 3 at `auto` and seed 1 in fp32 (cores 2-7), for the class's
# three-seed mean and its bf16 - fp32 pair.
# Each step gets what is left of $BUDGET seconds and is skipped when it would not fit;
# STEPS="name ..." runs some of them. Logs and run folders (no weights) go to $OUT/logs.tgz.
#
#   FASHIONLAB_DATA=/path/to/idx OUT=/tmp/gpu BUDGET=450 bash bench/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${BUDGET:-450}
STEPS=" ${STEPS:-all} "
LOGS=$(mktemp -d)
RUNS=$(mktemp -d)
GPU_CORES=8-$(($(nproc) - 1))  # cores 0-7 are the CPU runs'

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

source "$(dirname "$0")/steps.sh"

GPU="taskset -c $GPU_CORES"
TRAIN="$GPU python3 -m fashionlab train"

TAIL=12 step info 10 bash -c 'nvidia-smi -L; lscpu | grep -E "Model name|Thread|Core|Socket";
  lscpu -e | head -5; grep -o -w -E "amx_bf16|avx512_bf16|avx512f" /proc/cpuinfo | sort -u;
  python3 -c "import torch as t; print(t.__version__, t.version.cuda, t.cuda.get_device_name())"'
step cpu-fast 60 taskset -c 0,1 env OMP_NUM_THREADS=2 python3 -m fashionlab train fast \
  --seed 1 --device cpu --out "$RUNS/cpu-fast" &
cpu_fast() {  # NAME CORES ARGS...: fast on two cores of the host CPU
  local name=$1 cores=$2
  shift 2
  step "$name" 200 taskset -c "$cores" env OMP_NUM_THREADS=2 python3 -m fashionlab train fast \
    --device cpu --no-plots --out "$RUNS/$name" "$@"
}
if [[ $STEPS == *" all "* || $STEPS == *" cpu-fast-more "* ]]; then
  STEPS="$STEPS cpu-fast-seed2 cpu-fast-seed3 cpu-fast-fp32 "
  cpu_fast cpu-fast-seed2 2,3 --seed 2 &
  cpu_fast cpu-fast-seed3 4,5 --seed 3 &
  cpu_fast cpu-fast-fp32 6,7 --seed 1 --precision fp32 &
fi
step fast-bf16 60 $TRAIN fast --seed 1 --precision bf16 --out "$RUNS/fast-bf16"
step fast-fp32 60 $TRAIN fast --seed 1 --precision fp32 --out "$RUNS/fast-fp32"
TAIL=30 step steps 60 $GPU python3 bench/gpu.py fast best weil-cnn korssjoen-cnn-maxpool \
  --compile fast --steps 50 --rounds 3
step loop 40 $GPU python3 bench/loop_overhead.py fast --rounds 2
TAIL=15 step tests 120 $GPU python3 -m pytest -q -n 4 -p no:cacheprovider -m "not slow" tests
step avgpool 150 $GPU python3 -m fashionlab reproduce korssjoen-cnn-avgpool \
  --set train.precision=fp32 -q --out "$RUNS/repro" -o "$LOGS/korssjoen-cnn-avgpool.md"
for p in bf16 fp32; do
  step best-$p 90 $TRAIN best --seed 1 --precision $p --no-plots -q --out "$RUNS/best-$p"
done
for p in bf16 fp32; do
  step fast-seeds-$p 60 $TRAIN fast --seeds 2,3 --precision $p --no-plots -q \
    --out "$RUNS/fast-seeds-$p"
done
wait

find "$RUNS" \( -name '*.safetensors' -o -name 'checkpoint*' \) -delete
tar czf "$OUT/logs.tgz" -C "$LOGS" . -C "$RUNS" .
echo "== done in $SECONDS s"
