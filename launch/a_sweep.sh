#!/usr/bin/env bash
# The a-sweep of the EAST paper's Figure 3: the same run for a in -3..3, then one report over all of them.
#   launch/a_sweep.sh configs/gsm8k_sft_east.yaml [extra key=value ...]
set -euo pipefail
CONFIG=${1:?usage: a_sweep.sh CONFIG.yaml [key=value ...]}
shift
A_VALUES=${A_VALUES:-"-3 -2 -1 0 1 2 3"}
base=$(basename "$CONFIG" .yaml)
runs=()
for a in $A_VALUES; do
  name="${base}_a${a}"
  east-ds run "$CONFIG" "weighting.a=$a" "name=$name" "$@"
  runs+=("runs/$name")
done
east-ds report "${runs[@]}" --out "runs/${base}_a_sweep_report"
