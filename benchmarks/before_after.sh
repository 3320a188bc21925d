#!/bin/bash
# Before/after in one run: the tree at a git revision (exported to a temporary directory) and
# this checkout, alternately, ROUNDS times each, so drift on the machine hits both alike.
# Usage (from the repository root): benchmarks/before_after.sh REV [ROUNDS] [KILLS]
# Prints where the JSON results are; compare `ratequeue.summary.total` (failover; in a tree
# that measures each coordination store, `ratequeue.redis.summary.total`: it is run on the
# Redis control store only, as older trees are) and `figures.b_ratio` (queue) between the
# `before-*` and `after-*` directories.
# Not for: CI (timings depend on the machine).
set -euo pipefail
rev=${1:?usage: benchmarks/before_after.sh REV [ROUNDS] [KILLS]}
rounds=${2:-3}
kills=${3:-10}
here=$(pwd)
python=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work/before-tree"' EXIT
mkdir -p "$work/before-tree"
git archive "$rev" | tar -x -C "$work/before-tree"
for round in $(seq "$rounds"); do
  for side in before after; do
    if [ "$side" = before ]; then src=$work/before-tree; else src=$here; fi
    (cd "$src" && PYTHONPATH=$src "$python" -m benchmarks.queue_throughput --quick \
        --output "$work/$side-queue-$round" > "$work/$side-queue-$round.log" 2>&1)
    control=()
    if grep -q "def run_backend" "$src/benchmarks/failover_recovery.py"; then
      control=(--control redis)
    fi
    (cd "$src" && PYTHONPATH=$src "$python" -m benchmarks.failover_recovery --kills "$kills" \
        --sentinel-kills 0 "${control[@]}" --output "$work/$side-failover-$round" \
        > "$work/$side-failover-$round.log" 2>&1)
    echo "$side, round $round: done"
  done
done
echo "results in $work"
