#!/usr/bin/env bash
# A/B of a library preloaded into the whole process (another malloc, another OpenMP runtime).
# It cannot be swapped inside one Python process as bench/ab.py swaps code, so this alternates
# whole processes of bench/profile_step.py: none, then each library, ROUNDS times.
#
#   bench/preload_ab.sh 3 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 -- \
#       duan-lenet5 weil-cnn --threads 2 --layouts channels_last --precision fp32,bf16 \
#       --steps 200 --rounds 5
set -euo pipefail
usage="usage: bench/preload_ab.sh ROUNDS LIBRARY... -- PROFILE_STEP_ARGS..."
case "${1:-}" in -h|--help) echo "$usage"; exit 0;; ""|*[!0-9]*) echo "$usage" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
rounds=$1
shift
libs=("")
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ -r "$1" ] || { echo "preload_ab.sh: no such library: $1" >&2; exit 2; }
  libs+=("$1")
  shift
done
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
shift
for round in $(seq "$rounds"); do
  for lib in "${libs[@]}"; do
    LD_PRELOAD=$lib .venv/bin/python bench/profile_step.py "$@" \
      | sed "s|^|round $round, preload ${lib:-none}: |"
  done
done
