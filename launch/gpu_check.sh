#!/usr/bin/env bash
# The GPU-marked checks and the training-throughput figure, for a task that is lent a GPU machine.
#
# The lent machine has torch, transformers, accelerate and triton but no deepspeed, ray or vllm, and no package
# registry. So the checks that can run there are the training ones (DeepSpeed on CUDA); vLLM cannot be carried.
#
#   launch/gpu_check.sh prepare     # here (with registry access): wheels for deepspeed and its small deps
#                                   #   into .gpu_wheels/ (about 6 MB, git-ignored)
#   launch/gpu_check.sh run         # on the GPU machine, from the repository root, with .gpu_wheels carried:
#                                   #   install them, run `pytest -m gpu`, then the 0.5B ZeRO-2 bf16 benchmark
#
# With the device tool: run(command="bash launch/gpu_check.sh run", carry=[".gpu_wheels"], timeout_s=540).
# Untested so far: no session has had a GPU machine yet.
set -euo pipefail
WHEELS=${WHEELS:-.gpu_wheels}
PY=${PY:-python3}

case "${1:-}" in
  prepare)
    mkdir -p "$WHEELS"
    "${PIP:-.venv/bin/pip}" download --quiet --no-deps -d "$WHEELS" deepspeed==0.19.8 hjson py-cpuinfo msgpack \
      ninja einops nvidia-ml-py pydantic pydantic-core annotated-types typing-inspection pytest iniconfig pluggy \
      pyyaml pandas pyarrow tokenizers hypothesis sortedcontainers
    du -sh "$WHEELS"
    ;;
  run)
    out=${OUT:-gpu_out}
    mkdir -p "$out"
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    # deepspeed builds no CUDA ops at install time (DS_BUILD_OPS=0); ZeRO-2 with torch's AdamW needs none.
    DS_BUILD_OPS=0 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" deepspeed pytest hypothesis \
      pyyaml pandas pyarrow tokenizers 2>&1 | tail -3
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    "$PY" -m pytest -q -m gpu tests/test_train_engine.py 2>&1 | tee "$out/pytest_gpu.txt"
    "$PY" benchmarks/gpu_train_throughput.py --steps 10 --seq 1024 --micro 8 --gas 2 2>&1 | tee "$out/throughput.txt"
    ;;
  *)
    sed -n '2,13p' "$0"
    exit 2
    ;;
esac
