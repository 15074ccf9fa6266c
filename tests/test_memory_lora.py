"""GPU memory per trainer rank for LoRA runs (east_ds.checks.memory with training.lora): the adapter's size by
hand, the shipped one-GPU 8B LoRA config against an 80 GB GPU, and the verdict saying when full fine-tuning
would not fit but LoRA would. Pure arithmetic on Llama-3.1-8B's shape; no weights read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from east_ds.checks import memory as mem
from east_ds.checks.memory import GiB
from east_ds.config import LoraConfig, load_config

from test_memory_check import SHAPE_8B, shipped_choices

ROOT = Path(__file__).resolve().parents[1]
SHAPE = replace(SHAPE_8B, q_dim=4096)  # 32 heads x 128


def test_adapter_parameters_of_llama_8b_by_hand():
    """Rank 16 on every linear layer: per layer 16 x (q 4096+4096, k and v 4096+1024 each, o 4096+4096, gate and
    up 4096+14336 each, down 14336+4096) = 16 x 81,920 = 1,310,720; x 32 layers = 41,943,040."""
    assert mem.lora_params(SHAPE, 16, LoraConfig().target_modules) == 41_943_040
    assert mem.lora_params(SHAPE, 8, ("q_proj", "v_proj")) == 32 * 8 * (8192 + 5120)
    assert mem.lora_params(SHAPE, 8, ("lm_head", "not_a_layer")) == 0


def test_the_shipped_8b_lora_config_fits_one_80_gb_gpu_where_full_fine_tuning_does_not():
    """configs/gsm8k_sft_east_8b_lora.yaml: one colocated rank, ZeRO-2, bf16, micro 2 x 1024. Model states: the
    frozen base 2 x 8,030,261,248 + the adapter (2 + 16) x 41,943,040; the reduce and all-gather buckets hold at
    most the adapter's gradients (2 x 2 x 41,943,040, under the JSON's 5e7 each); then activations,
    1 GiB of runtime and 3 GiB of a sleeping engine: about 22 GiB. Full fine-tuning with the same settings needs
    about 156 GiB, and the verdict says so."""
    from east_ds.training.engine import build_ds_config

    cfg = load_config(ROOT / "configs" / "gsm8k_sft_east_8b_lora.yaml")
    assert (cfg.training.num_ranks, cfg.rollout.num_engines, cfg.placement.mode) == (1, 1, "colocated")
    s = mem.train_setup(cfg, build_ds_config(cfg.training, cfg.model, 1))
    s = replace(s, lora_params=mem.lora_params(SHAPE, cfg.training.lora.r, cfg.training.lora.target_modules))
    est = dict(mem.estimate_rank_memory(SHAPE, s).parts)
    assert est["model states"] == 2 * 8_030_261_248 + 18 * 41_943_040
    assert est["buckets"] == 2 * 2 * 41_943_040
    fits, message = mem.memory_verdict(SHAPE, s, 80 * GiB, "--gpu-memory-gib=80", cfg.training.deepspeed_config,
                                       shipped_choices(), 1)
    assert fits and message.startswith("each trainer rank needs about 22.2 GiB of GPU memory, the GPU has 80.0")
    assert "LoRA (41,943,040 trainable parameters)" in message
    assert message.endswith("Full fine-tuning with these settings would need about 156.2 GiB per rank and would "
                            "not fit; LoRA does")


def test_full_fine_tuning_that_does_not_fit_names_lora():
    """A full fine-tuning run of 8B on one 80 GB rank does not fit; the verdict names the LoRA setting that would."""
    from east_ds.training.engine import build_ds_config

    cfg = load_config(ROOT / "configs" / "gsm8k_sft_east_8b_lora.yaml", ["training.lora.r=0"])
    s = mem.train_setup(cfg, build_ds_config(cfg.training, cfg.model, 1))
    fits, message = mem.memory_verdict(SHAPE, s, 80 * GiB, "--gpu-memory-gib=80", cfg.training.deepspeed_config,
                                       shipped_choices(), 1)
    assert not fits
    assert message.endswith("Full fine-tuning does not fit; LoRA would: training.lora.r=16 (41.9M trainable "
                            "parameters) needs about 22.2 GiB per rank")
