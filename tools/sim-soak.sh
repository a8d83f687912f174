#!/usr/bin/env bash
# Runs the deterministic simulation (tests/sim.rs) over a long seed range,
# in release, for a bounded time, and prints how many seeds and steps ran.
#
#   tools/sim-soak.sh [budget_seconds] [seeds a..b] [steps per seed]
#
# A failing seed stops the run and prints its one-line replay command.
set -euo pipefail
cd "$(dirname "$0")/.."
budget_s="${1:-300}"
seeds="${2:-0..100000}"
steps="${3:-2000}"
echo "sim-soak: seeds $seeds, $steps steps each, budget ${budget_s}s"
set +e
SIM_SEEDS="$seeds" SIM_STEPS="$steps" SIM_BUDGET_S="$budget_s" \
  cargo test --release --test sim -- --nocapture --exact simulate_seeds 2>&1 |
  grep -E '^sim:|failed|replay:|panicked|test result'
rc="${PIPESTATUS[0]}"
exit "$rc"
