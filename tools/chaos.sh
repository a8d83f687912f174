#!/usr/bin/env bash
# Longer kill -9 chaos: runs the chaos test for a range of seeds with a
# longer commit stream. Bounded: stops after SECONDS_MAX (default 900).
#   tools/chaos.sh [FIRST_SEED] [LAST_SEED] [COMMITS]
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}; last=${2:-20}; commits=${3:-60}
max=${SECONDS_MAX:-900}
cargo build --release --tests --bins -q
start=$SECONDS; ran=0
for seed in $(seq "$first" "$last"); do
  if (( SECONDS - start > max )); then echo "chaos: time budget reached"; break; fi
  CHAOS_SEED=$seed CHAOS_COMMITS=$commits cargo test --release -q --test chaos -- --nocapture 2>&1 \
    | grep -E '^chaos:|panicked|FAILED' || true
  ran=$((ran + 1))
done
echo "chaos: ran $ran seed(s) in $((SECONDS - start)) s"
