# step NAME SECONDS-NEEDED COMMAND...: the timed, budgeted steps of bench/gpu_check.sh and
# bench/cpu_check.sh (sourced by both). A step runs when $STEPS holds "all" or its name, and
# only if the SECONDS it needs fit in what is left of $BUDGET; its output goes to
# $LOGS/NAME.log, of which the last $TAIL lines (6) are printed.
step() {
  local name=$1 need=$2 left=$((BUDGET - SECONDS))
  shift 2
  [[ $STEPS == *" all "* || $STEPS == *" $name "* ]] || return 0
  if ((left < need)); then
    echo "== $name: skipped ($left s left, needs $need)"
    return
  fi
  echo "== $name: $* ($(date -u +%T) UTC)"
  local start=$SECONDS
  timeout $((left > 6 ? left - 5 : 1)) "$@" >"$LOGS/$name.log" 2>&1
  echo "== $name: rc $? in $((SECONDS - start)) s"
  grep -v '^\s*$' "$LOGS/$name.log" | tail -n "${TAIL:-6}"
}
