"""What east_ds decides for LoRA engines on GPUs (training.lora), pinned on a CPU machine (marker `gpu_plan`).

Each docstring names the upstream line (vLLM 0.32.0 as installed, paths relative to site-packages) that makes the
pinned output right. docs/gpu.md maps each to its GPU path and to what only a GPU can show.
"""

from __future__ import annotations

import dataclasses

import pytest

from east_ds.cluster import device_plan as plan

pytestmark = pytest.mark.gpu_plan


def engine_kwargs(on_gpu: bool, lora_rank: int) -> dict:
    return plan.engine_kwargs("m", 1, "bfloat16", 2048, 1, True, False, on_gpu=on_gpu, enforce_eager=False,
                              gpu_memory_utilization=0.5, enable_sleep=on_gpu, lora_rank=lora_rank)


def test_lora_engines_are_built_with_lora_enabled_and_a_rank_vllm_accepts():
    """vllm/engine/arg_utils.py:676-678: `enable_lora` and `max_lora_rank`, whose type is MaxLoRARanks,
    vllm/config/lora.py:26 (1, 8, 16, 32, 64, 128, 256, 320, 512: any other value is refused when the config
    is validated); vllm/lora/peft_helper.py:193-197 refuses an adapter whose rank is above max_lora_rank. So
    the rank is rounded up to the next value vLLM takes. One adapter slot (`max_loras`, vllm/config/lora.py:35):
    every request goes through the one policy adapter. The keys are fields of vLLM's own EngineArgs."""
    from vllm.config.lora import LoRAConfig
    from vllm.engine.arg_utils import EngineArgs

    for on_gpu in (True, False):
        kw = engine_kwargs(on_gpu, 8)
        assert (kw["enable_lora"], kw["max_lora_rank"], kw["max_loras"]) == (True, 8, 1)
        assert not set(kw) - {f.name for f in dataclasses.fields(EngineArgs)}
    assert engine_kwargs(True, 4)["max_lora_rank"] == 8
    assert engine_kwargs(True, 17)["max_lora_rank"] == 32
    assert "enable_lora" not in engine_kwargs(True, 0)  # full fine-tuning: no LoRA layers in the engine
    for r in (1, 3, 8, 9, 64, 100, 512):
        rank = plan.vllm_lora_rank(r)
        assert rank >= r and LoRAConfig(max_lora_rank=rank).max_lora_rank == rank
    with pytest.raises(ValueError, match="at most 512"):
        plan.vllm_lora_rank(513)


def test_lora_engines_keep_their_base_weights_through_a_sleep():
    """Colocated LoRA engines sleep at level 1: vllm/device_allocator/sleep_mode_backend.py:134-137 offloads the
    allocations tagged "weights" to host memory at level 1 (level 2 discards them), and the LoRA layers' slots
    are allocated while the model loads, inside that pool (vllm/v1/worker/gpu_worker.py:587-594 loads the model
    under tag "weights"; vllm/v1/worker/gpu_model_runner.py:5066-5069 wraps it in its LoRA layers there). The base
    never changes in a LoRA run, so waking gives it back unchanged and only the adapter loads between the two
    wakes, in the order full models use (wake weights, update, wake KV cache)."""
    lora = plan.sleep_plan(reload_after_wake=True, adapter_only=True)
    assert lora.level == 1
    assert lora.wake_order == ("release trainer memory", "wake weights", "update adapter", "wake kv_cache")
    assert plan.sleep_plan(reload_after_wake=True).level == 2  # a full model is replaced: nothing kept


def test_lora_layers_force_eager_compilation_on_the_cpu_only():
    """vllm/platforms/cpu.py:379-380 turns compilation off on the CPU when LoRA is on; the GPU platform keeps
    CUDA graphs with LoRA (vllm/config/lora.py: `specialize_active_lora` captures graphs per active-adapter
    count), so east_ds leaves `enforce_eager` to rollout_defaults on both devices."""
    assert engine_kwargs(True, 8)["enforce_eager"] is False
    import inspect

    from vllm.platforms import cpu

    src = inspect.getsource(cpu)
    assert "if vllm_config.lora_config is not None:\n            compilation_config.mode = CompilationMode.NONE" in src
