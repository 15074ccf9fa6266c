#!/usr/bin/env bash
# Launch east_ds.train under the deepspeed launcher.
#   one node:    launch/train_deepspeed.sh --num_gpus 8 --config configs/gsm8k_sft_east.yaml --examples ex.parquet \
#                    --model M --out D training.gradient_accumulation_steps=1 [k=v ...]   # 2 x 1 x 8 ranks = 16
#   many nodes:  launch/train_deepspeed.sh --hostfile launch/hostfile.example --config configs/gsm8k_sft_east.yaml \
#                    ... training.micro_batch_size=1 training.gradient_accumulation_steps=1   # 1 x 1 x 16 ranks = 16
#   CPU (tests): DS_ACCELERATOR=cpu launch/train_deepspeed.sh --num_gpus 2 --config configs/demo_cpu.yaml ... \
#                    training.gradient_accumulation_steps=1   # 2 CPU ranks over gloo: 8 x 1 x 2 = 16
# micro_batch_size x gradient_accumulation_steps x ranks must equal global_batch_size (east_ds.config).
# Launcher options (--num_gpus, --num_nodes, --hostfile, --master_port, --include, --exclude) come first;
# everything from --config on is passed to east_ds.train. Note: the deepspeed launcher spells `-m` as `--module`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEEPSPEED="${DEEPSPEED:-$HERE/.venv/bin/deepspeed}"
[ -x "$DEEPSPEED" ] || DEEPSPEED=deepspeed
export TOKENIZERS_PARALLELISM=false
if [ "${DS_ACCELERATOR:-}" = "cpu" ]; then
  export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HERE/.venv/torch_extensions}"
fi
launcher=()
while [ $# -gt 0 ] && [ "$1" != "--config" ] && [ "$1" != "--examples" ]; do
  launcher+=("$1"); shift
done
cd "$HERE"
exec "$DEEPSPEED" "${launcher[@]}" --module east_ds.train "$@"
