#!/usr/bin/env bash
# Launch east_ds.train under the deepspeed launcher.
#   one node:    launch/train_deepspeed.sh --num_gpus 8 --config run.yaml --examples ex.parquet --model M --out D [k=v ...]
#   many nodes:  launch/train_deepspeed.sh --hostfile launch/hostfile.example --config run.yaml ... [k=v ...]
#   CPU (tests): DS_ACCELERATOR=cpu launch/train_deepspeed.sh --num_gpus 2 ...   (2 CPU ranks over gloo)
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
