#!/usr/bin/env bash
# One EAST iteration, stage by stage, with the plain `deepspeed` launcher for training (no Ray driver):
#
#   rollout (vLLM)  ->  grade + weight  ->  [reference log-probs: dpo/kto]  ->  train (deepspeed)  ->  eval
#
#   launch/iteration_deepspeed.sh MODEL ITER_DIR [key=value ... passed to east_ds.train]
#
# MODEL is the policy to sample from and start training from (HF directory or hub name); ITER_DIR receives
# rollouts.parquet, questions/examples/graded.parquet, checkpoint/hf (the trained model) and eval.parquet.
# For iterative EAST call it again with MODEL=ITER_DIR/checkpoint/hf:
#
#   m=base-model; for k in 1 2 3; do launch/iteration_deepspeed.sh "$m" runs/east/iter_$k; m=runs/east/iter_$k/checkpoint/hf; done
#
# Every stage reads and writes tables on disk, so a failed stage can be rerun alone (RESUME=1 skips stages
# whose output already exists).
set -euo pipefail

# ---- settings (environment overrides) --------------------------------------------------------------------
EAST_DS=${EAST_DS:-east-ds}                 # the CLI
DEEPSPEED=${DEEPSPEED:-deepspeed}           # the launcher
TRAIN_DATA=${TRAIN_DATA:-data/gsm8k_train.jsonl}
TEST_DATA=${TEST_DATA:-data/gsm8k_test.jsonl}   # empty: skip evaluation
FORMAT=${FORMAT:-gsm8k}                     # gsm8k | math
LIMIT=${LIMIT:-}                            # first K training questions only (empty: all)
N=${N:-16}                                  # samples per question
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-1024}      # per response, rollout and eval
NUM_ENGINES=${NUM_ENGINES:-1}               # data-parallel vLLM engines for rollout
A=${A:-1.0}                                 # mapping-function exponent (0: vanilla self-training)
VALUE=${VALUE:-entropy}                     # entropy | accuracy | rejected
LOSS=${LOSS:-sft}                           # sft | dpo | kto
TRAIN_CONFIG=${TRAIN_CONFIG:-}             # a run YAML whose training/model sections to use (empty: defaults)
NUM_GPUS=${NUM_GPUS:-1}                     # training ranks on this node (CPU: DS_ACCELERATOR=cpu, ranks)
HOSTFILE=${HOSTFILE:-}                      # a DeepSpeed hostfile for multi-node training (empty: this node)
MASTER_PORT=${MASTER_PORT:-29500}
RESUME=${RESUME:-0}
LOSS_KEY=${LOSS_KEY:-training.loss}           # the train CLI override that sets the loss (must match the examples)

model=${1:?usage: iteration_deepspeed.sh MODEL ITER_DIR [train key=value ...]}
iter_dir=${2:?usage: iteration_deepspeed.sh MODEL ITER_DIR [train key=value ...]}
shift 2
train_overrides=("$@")
mkdir -p "$iter_dir"

stage() {  # stage NAME OUTPUT CMD...: run CMD unless RESUME=1 and OUTPUT exists; time it
  local name=$1 output=$2; shift 2
  if [[ "$RESUME" == 1 && -e "$output" ]]; then echo "== $name: $output exists, skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  echo "== $name done in $((SECONDS - t0)) s"
}

# ---- 1. rollout: N samples per question from MODEL --------------------------------------------------------
limit=()
[[ -n "$LIMIT" ]] && limit=(--limit "$LIMIT")
stage rollout "$iter_dir/rollouts.parquet" \
  "$EAST_DS" rollout --model "$model" --data "$TRAIN_DATA" --format "$FORMAT" "${limit[@]+"${limit[@]}"}" \
  --n "$N" --temperature "$TEMPERATURE" --max-new-tokens "$MAX_NEW_TOKENS" --num-engines "$NUM_ENGINES" \
  --out "$iter_dir"

# ---- 2. grade, cluster, entropy, weights, example selection -----------------------------------------------
stage weight "$iter_dir/examples.parquet" \
  "$EAST_DS" weight "$iter_dir/rollouts.parquet" --a "$A" --value "$VALUE" --loss "$LOSS" --out "$iter_dir"

# ---- 3. reference log-probs (DPO/KTO) happen inside east_ds.train: before training, the frozen starting model
# (--model) scores chosen/rejected into ITER_DIR/checkpoint/examples_ref.parquet, then training reads that.
examples="$iter_dir/examples.parquet"

# ---- 4. train with the weighted loss (deepspeed launcher: one process per GPU / CPU rank) ------------------
launcher=("$DEEPSPEED" --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
[[ -n "$HOSTFILE" ]] && launcher=("$DEEPSPEED" --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
config=()
[[ -n "$TRAIN_CONFIG" ]] && config=(--config "$TRAIN_CONFIG")
stage train "$iter_dir/checkpoint/hf" \
  "${launcher[@]}" --module east_ds.train "${config[@]+"${config[@]}"}" --examples "$examples" --model "$model" \
  --out "$iter_dir/checkpoint" "$LOSS_KEY=$LOSS" "${train_overrides[@]+"${train_overrides[@]}"}"

# ---- 5. evaluate the trained model: greedy, one sample per test question ------------------------------------
if [[ -n "$TEST_DATA" ]]; then
  stage eval "$iter_dir/eval.parquet" \
    "$EAST_DS" eval --model "$iter_dir/checkpoint/hf" --data "$TEST_DATA" --format "$FORMAT" \
    --max-new-tokens "$MAX_NEW_TOKENS" --out "$iter_dir/eval.parquet"
fi
echo "iteration done: model $iter_dir/checkpoint/hf"
