#!/usr/bin/env bash
# Issue 7's checks on the CPU this runs on, one after the other, for an otherwise idle machine
# (docs/speed.md, "Where issue 7's targets stand"): the CPU and its flags; the step A/Bs
# behind what `auto` does on CPUs (whole-input convolution as a matmul, pool before
# activation, the direct fused Adam call; with native bf16, bf16 in the convolutions only);
# `fast` for seeds 1-3 at `auto`, timed from start to result with plots, and their mean;
# where `auto` picks bf16, seed 1's settings again in fp32; and, only when named in STEPS,
# `best --seed 1` (best: 25-35 minutes) and bench/vs_keras.py over three seeds (vs-keras:
# about an hour). Each step gets what is left of $BUDGET seconds and is skipped when it would
# not fit; STEPS="name ..." runs some of them. Logs and run folders go to $OUT (a fresh one
# each time: fast-mean compares every `fast` run in it).
#
#   OUT=/tmp/cpu_check bash bench/cpu_check.sh
#   STEPS="info fast-s1" bash bench/cpu_check.sh
#   STEPS="all best vs-keras" BUDGET=9000 bash bench/cpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cpu_check}
BUDGET=${BUDGET:-3600}
STEPS=" ${STEPS:-all} "
PY=${PY:-.venv/bin/python}
LOGS=$OUT/logs
RUNS=$OUT/runs
mkdir -p "$LOGS" "$RUNS"
export PYTHONUNBUFFERED=1
source bench/steps.sh

TAIL=12 step info 20 bash -c "lscpu | grep -E 'Model name|Thread|Core|Socket';
  grep -o -w -E 'amx_bf16|avx512_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo;
  uptime; $PY -c 'import torch; print(torch.__version__)'"
AB="$PY bench/ab.py"
step ab-whole 120 $AB whole duan-lenet5 --threads 2 --steps 100 --rounds 9
step ab-order 240 $AB order duan-lenet5 quick-cnn bodapati-task3 --threads 2 --steps 100 --rounds 9
step ab-stepper 300 $AB stepper weil-fc duan-fc korssjoen-fc weil-cnn duan-lenet5 --threads 2 \
  --steps 200 --rounds 9
# what `auto` trains `fast` in here: bf16 only on CPUs with native bf16
auto=$($PY -c "import torch; from fashionlab import config, hardware, models
net = models.build(config.resolve('fast')['model']['layers'])
print(hardware.resolve_precision('auto', torch.device('cpu'), net.conv_flops))")
if [ "$auto" != fp32 ]; then  # elsewhere bf16 is emulated, many times slower: nothing to weigh
  step ab-convbf16 300 $AB convbf16 duan-lenet5 weil-cnn quick-cnn --threads 2 --steps 200 \
    --rounds 9
fi

TIME=(/usr/bin/time -f "wall %e s, peak RSS %M KiB")
for s in 1 2 3; do
  TAIL=3 step fast-s$s 660 "${TIME[@]}" $PY -m fashionlab train fast --seed $s \
    --out "$RUNS/fast-s$s"
done
fast_runs=("$RUNS"/fast-s?/*-fast)
if [ -d "${fast_runs[0]}" ]; then
  TAIL=14 step fast-mean 60 $PY -m fashionlab compare "${fast_runs[@]}"
fi
# The same settings in fp32: the bf16 run's config.toml holds them with its [bf16] table
# applied, where `fast --precision fp32` would train the recipe's own (fewer) epochs.
bf16_run=$(ls -d "$RUNS"/fast-s1/*-fast 2>/dev/null | tail -n 1)
if [ "$auto" != fp32 ] && [ -n "$bf16_run" ]; then
  TAIL=3 step fast-fp32 1500 "${TIME[@]}" $PY -m fashionlab train "$bf16_run/config.toml" \
    --seed 1 --precision fp32 --out "$RUNS/fast-fp32"
fi
if [[ $STEPS == *" best "* ]]; then
  TAIL=3 step best 2400 "${TIME[@]}" $PY -m fashionlab train best --seed 1 --out "$RUNS/best"
fi
if [[ $STEPS == *" vs-keras "* ]]; then
  TAIL=30 step vs-keras 4200 $PY bench/vs_keras.py --seeds 0,1,2 --cnn002-images 1000 \
    --out "$LOGS/vs_keras.md"
fi
echo "== done in $SECONDS s; logs in $LOGS, runs in $RUNS"
