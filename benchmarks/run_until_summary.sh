# shellcheck shell=bash
# Sourced by benchmarks/run_gpu.sh.
# run_until_summary LOG CMD...: CMD's output into LOG; stopped at TEST_LIMIT seconds (rc 124), or SUMMARY_GRACE
# seconds (default 10) after pytest's summary line if it has not exited by then (a pytest session on a GPU has been
# seen to hang after its last test); then its rc is 1 if the summary counts failures or errors, else 0.
run_until_summary() {
  local log=$1; shift
  setsid "$@" > "$log" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2> /dev/null; do
    if grep -qE "^=+ .*(passed|failed|error).* in [0-9.]+s" "$log"; then
      sleep "${SUMMARY_GRACE:-10}"              # a normal exit takes a moment
      if kill -0 "$pid" 2> /dev/null; then
        kill -- -"$pid" 2> /dev/null; echo "pytest printed its summary but did not exit: stopped"
        grep -qE "^=+ .*(failed|error)" "$log" && return 1 || return 0
      fi
      break
    fi
    if [ "$waited" -ge "$TEST_LIMIT" ]; then kill -- -"$pid" 2> /dev/null; return 124; fi
    sleep 2; waited=$((waited + 2))
  done
  wait "$pid"
}
