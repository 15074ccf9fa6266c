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
#
# Multi-node training without ssh between nodes: start the script once per node, with the same HOSTFILE, ITER_DIR
# on storage every node sees, and NO_SSH=1 NODE_RANK=r MASTER_ADDR=<node 0's address>. Node 0 runs every stage;
# the others wait for node 0's examples.parquet, then run only their share of the training ranks:
#
#   node 0:  HOSTFILE=hf NO_SSH=1 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/iteration_deepspeed.sh M /shared/iter_1
#   node 1:  HOSTFILE=hf NO_SSH=1 NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/iteration_deepspeed.sh M /shared/iter_1
#
# GPUs on one node: with CUDA_VISIBLE_DEVICES set (e.g. 4,5) training runs on the first NUM_GPUS of those GPUs
# (`deepspeed --include localhost:4,5`; `--num_gpus N` would make the launcher drop CUDA_VISIBLE_DEVICES and take
# GPUs 0..N-1). With HOSTFILE and ssh (no NO_SSH=1), the remote ranks get this environment's HF_*, TOKENIZERS_*,
# TORCH_*, DS_*, CUDA_HOME, LD_LIBRARY_PATH and OMP_NUM_THREADS through ITER_DIR/.deepspeed_env (DS_ENV_FILE points
# the launcher at it; your ~/.deepspeed_env and ./.deepspeed_env are copied into it and still apply).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # write_deepspeed_env

# ---- settings (environment overrides) --------------------------------------------------------------------
EAST_DS=${EAST_DS:-east-ds}                 # the CLI
DEEPSPEED=${DEEPSPEED:-deepspeed}           # the launcher
TRAIN_DATA=${TRAIN_DATA:-data/gsm8k_train.jsonl}
TEST_DATA=${TEST_DATA-data/gsm8k_test.jsonl}    # empty (TEST_DATA=): skip evaluation
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
NO_SSH=${NO_SSH:-0}                         # 1: one launcher per node (deepspeed --no_ssh), needs HOSTFILE
NODE_RANK=${NODE_RANK:-0}                   # with NO_SSH=1: this node's line in HOSTFILE, from 0
MASTER_ADDR=${MASTER_ADDR:-}                # with NO_SSH=1: node 0's address, as the other nodes reach it
WAIT_S=${WAIT_S:-86400}                     # with NODE_RANK > 0: how long to wait for node 0's examples
RESUME=${RESUME:-0}
LOSS_KEY=${LOSS_KEY:-training.loss}           # the train CLI override that sets the loss (must match the examples)

model=${1:?usage: iteration_deepspeed.sh MODEL ITER_DIR [train key=value ...]}
iter_dir=${2:?usage: iteration_deepspeed.sh MODEL ITER_DIR [train key=value ...]}
shift 2
train_overrides=("$@")
mkdir -p "$iter_dir"
if [[ "$NO_SSH" == 1 ]]; then
  if [[ -z "$HOSTFILE" || -z "$MASTER_ADDR" ]]; then
    echo "iteration_deepspeed.sh: NO_SSH=1 needs HOSTFILE and MASTER_ADDR" >&2; exit 2
  fi
  [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || { echo "iteration_deepspeed.sh: NODE_RANK=$NODE_RANK is not a number" >&2; exit 2; }
fi

stage() {  # stage NAME OUTPUT CMD...: run CMD unless RESUME=1 and OUTPUT exists; time it
  local name=$1 output=$2; shift 2
  if [[ "$RESUME" == 1 && -e "$output" ]]; then echo "== $name: $output exists, skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  echo "== $name done in $((SECONDS - t0)) s"
}

examples="$iter_dir/examples.parquet"
if (( NODE_RANK > 0 )); then  # node 0 runs rollout, weighting and eval; this node only trains
  echo "== node $NODE_RANK: waiting for $examples from node 0"
  t0=$SECONDS
  until [[ -e "$examples" ]]; do
    (( SECONDS - t0 < WAIT_S )) || { echo "iteration_deepspeed.sh: no $examples after $WAIT_S s" >&2; exit 1; }
    sleep 2
  done
fi

# ---- 1. rollout: N samples per question from MODEL --------------------------------------------------------
limit=()
[[ -n "$LIMIT" ]] && limit=(--limit "$LIMIT")
(( NODE_RANK > 0 )) || stage rollout "$iter_dir/rollouts.parquet" \
  "$EAST_DS" rollout --model "$model" --data "$TRAIN_DATA" --format "$FORMAT" "${limit[@]+"${limit[@]}"}" \
  --n "$N" --temperature "$TEMPERATURE" --max-new-tokens "$MAX_NEW_TOKENS" --num-engines "$NUM_ENGINES" \
  --out "$iter_dir"

# ---- 2. grade, cluster, entropy, weights, example selection -----------------------------------------------
(( NODE_RANK > 0 )) || stage weight "$iter_dir/examples.parquet" \
  "$EAST_DS" weight "$iter_dir/rollouts.parquet" --a "$A" --value "$VALUE" --loss "$LOSS" --out "$iter_dir"

# ---- 3. reference log-probs (DPO/KTO) happen inside east_ds.train: before training, the frozen starting model
# (--model) scores chosen/rejected into ITER_DIR/checkpoint/examples_ref.parquet, then training reads that.

# ---- 4. train with the weighted loss (deepspeed launcher: one process per GPU / CPU rank) ------------------
if [[ -n "$HOSTFILE" ]]; then
  launcher=("$DEEPSPEED" --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
  if [[ "$NO_SSH" == 1 ]]; then
    launcher+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
  else  # the launcher starts the other nodes' ranks over ssh and forwards them only some variables
    write_deepspeed_env "$iter_dir/.deepspeed_env"
    DS_ENV_FILE="$(cd "$iter_dir" && pwd)/.deepspeed_env"
    export DS_ENV_FILE
  fi
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${DS_ACCELERATOR:-}" != cpu ]]; then
  # --num_gpus would drop CUDA_VISIBLE_DEVICES and use GPUs 0..NUM_GPUS-1: name this job's GPUs instead
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  if [[ ! "$CUDA_VISIBLE_DEVICES" =~ ^[0-9]+(,[0-9]+)*$ ]] || (( ${#visible[@]} < NUM_GPUS )); then
    echo "iteration_deepspeed.sh: NUM_GPUS=$NUM_GPUS needs as many GPU indices in" \
         "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES (deepspeed --include takes indices, not UUIDs)" >&2
    exit 2
  fi
  gpus=$(IFS=,; echo "${visible[*]:0:NUM_GPUS}")
  launcher=("$DEEPSPEED" --include "localhost:$gpus" --master_port "$MASTER_PORT")
else
  launcher=("$DEEPSPEED" --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
fi
config=()
[[ -n "$TRAIN_CONFIG" ]] && config=(--config "$TRAIN_CONFIG")
stage train "$iter_dir/checkpoint/hf" \
  "${launcher[@]}" --module east_ds.train "${config[@]+"${config[@]}"}" --examples "$examples" --model "$model" \
  --out "$iter_dir/checkpoint" "$LOSS_KEY=$LOSS" "${train_overrides[@]+"${train_overrides[@]}"}"

# ---- 5. evaluate the trained model: greedy, one sample per test question ------------------------------------
if [[ -n "$TEST_DATA" ]] && (( NODE_RANK == 0 )); then
  stage eval "$iter_dir/eval.parquet" \
    "$EAST_DS" eval --model "$iter_dir/checkpoint/hf" --data "$TEST_DATA" --format "$FORMAT" \
    --max-new-tokens "$MAX_NEW_TOKENS" --out "$iter_dir/eval.parquet"
fi
echo "iteration done: model $iter_dir/checkpoint/hf"
