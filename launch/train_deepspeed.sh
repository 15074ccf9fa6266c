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
# The launcher runs from the repository root (it puts its directory on PYTHONPATH, and remote ranks cd there), so
# relative --examples, --out, --config, --hostfile and --model (when a local path) are made absolute from the
# directory you call this in; paths inside the config and in key=value overrides resolve from the repository root.
# GPUs: --num_gpus N makes the launcher drop CUDA_VISIBLE_DEVICES and take GPUs 0..N-1; with CUDA_VISIBLE_DEVICES
# set (e.g. 4,5) pass `--include localhost:4,5` instead (the script warns). With --hostfile (ssh, no --no_ssh)
# the remote ranks get HF_*, TOKENIZERS_*, TORCH_*, DS_*, CUDA_HOME, LD_LIBRARY_PATH and OMP_NUM_THREADS through
# OUT/.deepspeed_env (DS_ENV_FILE; ~/.deepspeed_env and the repository's .deepspeed_env are copied into it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$HERE/launch/lib.sh"   # write_deepspeed_env
DEEPSPEED="${DEEPSPEED:-$HERE/.venv/bin/deepspeed}"
[ -x "$DEEPSPEED" ] || DEEPSPEED=deepspeed
export TOKENIZERS_PARALLELISM=false
if [ "${DS_ACCELERATOR:-}" = "cpu" ]; then
  export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HERE/.venv/torch_extensions}"
fi

abs() { if [[ -z "$1" || "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
args=() prev= out=
for a in "$@"; do  # path values, `--out D` and `--out=D`, made absolute before the cd below
  case "$prev" in
    --examples|--out|--config|--hostfile|-H) a=$(abs "$a") ;;
    --model) if [[ -e "$a" ]]; then a=$(abs "$a"); fi ;;
  esac
  case "$a" in
    --examples=*|--out=*|--config=*|--hostfile=*) a="${a%%=*}=$(abs "${a#*=}")" ;;
    --model=*) if [[ -e "${a#*=}" ]]; then a="--model=$(abs "${a#*=}")"; fi ;;
  esac
  case "$prev" in --out) out=$a ;; esac
  case "$a" in --out=*) out=${a#--out=} ;; esac
  args+=("$a")
  prev=$a
done
set -- "${args[@]+"${args[@]}"}"

launcher=() hostfile=0 no_ssh=0 num_gpus=0
while [ $# -gt 0 ]; do
  case "$1" in --config|--config=*|--examples|--examples=*) break ;; esac
  case "$1" in
    --hostfile|--hostfile=*|-H) hostfile=1 ;;
    --no_ssh) no_ssh=1 ;;
    --num_gpus|--num_gpus=*) num_gpus=1 ;;
  esac
  launcher+=("$1"); shift
done

if [[ "$num_gpus" == 1 && -n "${CUDA_VISIBLE_DEVICES:-}" && "${DS_ACCELERATOR:-}" != cpu ]]; then
  echo "train_deepspeed.sh: warning: with --num_gpus the deepspeed launcher ignores" \
       "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES and uses GPUs 0..N-1;" \
       "pass --include localhost:$CUDA_VISIBLE_DEVICES instead of --num_gpus" >&2
fi
cd "$HERE"
if [[ "$hostfile" == 1 && "$no_ssh" == 0 && -n "$out" ]]; then  # remote ranks over ssh: forward the environment
  mkdir -p "$out"
  write_deepspeed_env "$out/.deepspeed_env"
  export DS_ENV_FILE="$out/.deepspeed_env"
fi
exec "$DEEPSPEED" "${launcher[@]+"${launcher[@]}"}" --module east_ds.train "$@"
