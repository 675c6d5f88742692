#!/usr/bin/env bash
# Times the README's first command after set-up (fit the default config, then evaluate it) on this machine, once as
# the machine is and once with two busy CPU loops beside it (a 2-core machine "loaded"). Run under the heavy lock:
#   flock /tmp/injflow-heavy.lock bash docs/results/own_data/readme_timing.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
time_it() {
  local label=$1
  echo "[$label] load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  local t0=$(date +%s.%N)
  $PY -m injflow.cli fit --set run.dir="$WORK/$label" train.progress_bar=false > /dev/null 2>&1
  local t1=$(date +%s.%N)
  $PY -m injflow.cli evaluate "$WORK/$label" --no-progress > /dev/null 2>&1
  local t2=$(date +%s.%N)
  echo "[$label] fit $(echo "$t1 - $t0" | bc) s, evaluate $(echo "$t2 - $t1" | bc) s, load after: $(cut -d' ' -f1-3 /proc/loadavg)"
}
time_it as-is
$PY -c "while True: pass" & b1=$!
$PY -c "while True: pass" & b2=$!
trap 'kill $b1 $b2 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 5
time_it two-busy-loops
kill $b1 $b2
