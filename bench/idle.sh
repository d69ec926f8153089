#!/usr/bin/env bash
# Idle cost of a server: CPU ticks (utime+stime, /proc/PID/stat) and context switches summed
# over all its threads (/proc/PID/task/*/status) during a quiet window.
# Usage: bench/idle.sh SECONDS -- COMMAND [ARGS...]
set -euo pipefail
secs=${1:-10}; shift
[ "${1:-}" = "--" ] && shift
"$@" >/dev/null 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
sleep 1
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
switches() { cat /proc/$pid/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
t0=$(ticks); c0=$(switches); threads=$(ls /proc/$pid/task | wc -l)
sleep "$secs"
t1=$(ticks); c1=$(switches)
printf '%s: %d threads, %d CPU ticks (1 tick = 10 ms), %d context switches in %ss idle\n' \
  "$(basename "$1")" "$threads" $((t1 - t0)) $((c1 - c0)) "$secs"
