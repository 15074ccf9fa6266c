"""GPU memory per trainer rank (east_ds.checks.memory): DeepSpeed's estimators give the hand-derived model states
of Llama-3.1-8B and Llama-3.2-1B shapes, the activation formula matches what the installed transformers' Llama
layers save, and `east-ds check` / `east-ds run` fail, in seconds and with no weights read, on a training setting
that cannot fit, naming the per-rank need, the GPU's memory and settings that fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from east_ds.checks import memory as mem
from east_ds.checks.memory import GiB, ModelShape, TrainSetup
from east_ds.cli import main
from east_ds.config import load_config
from east_ds.tables import write_table

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"

# Llama-3.1-8B: hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256, untied embeddings.
# Parameters: embeddings and lm_head 2 x 128256 x 4096 = 1,050,673,152; per layer q 4096^2 + k, v 4096 x 1024
# each + o 4096^2 + MLP 3 x 4096 x 14336 + 2 norms 4096 = 218,112,000, x 32 = 6,979,584,000; final norm 4096.
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                tie_word_embeddings=False)
P_8B, EMBED_8B = 8_030_261_248, 128256 * 4096  # the largest module: embed_tokens (or lm_head), 525,336,576
# Llama-3.2-1B: hidden 2048, 16 layers, 32 heads (head_dim 64), 8 KV heads, MLP 8192, tied embeddings:
# 128256 x 2048 = 262,668,288 once + 16 x 60,821,504 + 2048 = 1,235,814,400.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                tie_word_embeddings=True)
P_1B, EMBED_1B = 1_235_814_400, 128256 * 2048

SHAPE_8B = ModelShape(params=P_8B, largest_layer=EMBED_8B, hidden=4096, layers=32, intermediate=14336,
                      kv_dim=1024, vocab=128256)
ZERO3 = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())["zero_optimization"]


def setup(zero=ZERO3, ranks=1, dtype="bfloat16", micro=2, max_len=1024, checkpointing=True, colocated=True,
          global_batch=16) -> TrainSetup:
    return TrainSetup(zero=zero, ranks=ranks, dtype=dtype, sequences=micro, max_len=max_len,
                      checkpointing=checkpointing, colocated=colocated, micro_batch=micro, global_batch=global_batch)


def ds_zero(name: str) -> dict:
    return json.loads((ROOT / "ds_configs" / f"{name}.json").read_text())["zero_optimization"]


def shipped_choices() -> dict:
    return {f"ds_configs/{p.name}": json.loads(p.read_text())["zero_optimization"]
            for p in sorted((ROOT / "ds_configs").glob("*.json"))}


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts and model states


@pytest.mark.parametrize("shape, params, largest", [(LLAMA_8B, P_8B, EMBED_8B), (LLAMA_1B, P_1B, EMBED_1B)],
                         ids=["llama-3.1-8b", "llama-3.2-1b"])
def test_parameter_counts_from_a_meta_model(shape, params, largest):
    """The counts preflight takes from the model built on the meta device: tied embeddings once."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
    assert mem.module_param_counts(model) == (params, largest)


def test_model_states_are_deepspeeds_estimates():
    """Hand-derived: ZeRO-3 = 4 x largest layer + 18 x P / N (stage3.py estimate_zero3_model_states_mem_needs),
    ZeRO-2 = 2 P + 18 P / N (stage_1_and_2.py), offload keeps the gathered layer (ZeRO-3 with parameters offloaded)
    or the 16-bit weights (ZeRO-2); float32 widens their 16-bit copies to 4 bytes."""
    states = lambda **kw: mem.model_states(SHAPE_8B, setup(**kw))[0]  # noqa: E731
    assert states() == 4 * EMBED_8B + 18 * P_8B == 146_646_048_768  # the "~145 GB on one GPU"
    assert states(ranks=8) == 4 * EMBED_8B + 18 * P_8B // 8 == 20_169_434_112
    assert states(zero=ds_zero("zero3_offload")) == 4 * EMBED_8B
    assert states(zero=ds_zero("zero2")) == 20 * P_8B
    assert states(zero=ds_zero("zero2"), ranks=4) == 2 * P_8B + 18 * P_8B // 4
    assert states(zero=ds_zero("zero2_offload")) == 2 * P_8B
    assert states(dtype="float32", ranks=8) == 8 * EMBED_8B + 20 * P_8B // 8
    shape_1b = ModelShape(P_1B, EMBED_1B, 2048, 16, 8192, 512, 128256)
    assert mem.model_states(shape_1b, setup())[0] == 4 * EMBED_1B + 18 * P_1B == 23_295_332_352
    # ZeRO-0/1, which DeepSpeed has no estimator for: bf16 ZeRO-0 20 bytes per parameter on every rank (16-bit
    # weights and gradients, fp32 master and gradients, Adam), ZeRO-1 8 + 12 / N (BF16_Optimizer).
    assert mem.model_states(shape_1b, setup(zero=ds_zero("zero0"), ranks=4))[0] == 20 * P_1B
    assert mem.model_states(shape_1b, setup(zero=ds_zero("zero1"), ranks=4))[0] == 8 * P_1B + 3 * P_1B
    assert mem.model_states(shape_1b, setup(zero=ds_zero("zero0"), dtype="float32"))[0] == 16 * P_1B


def test_offloaded_states_report_deepspeeds_host_memory():
    """The estimators' host figure with their additional_buffer_factor 1.5: ZeRO-3 offload 18 x P x 1.5 per
    node, ZeRO-2 offload max(4 N, 16) x P x 1.5."""
    assert mem.model_states(SHAPE_8B, setup(zero=ds_zero("zero3_offload")))[1] == int(P_8B * 18 * 1.5)
    assert mem.model_states(SHAPE_8B, setup(zero=ds_zero("zero2_offload")))[1] == int(P_8B * 16 * 1.5)


# ----------------------------------------------------------------------------------------------------------------
# Activations


def _saved_bytes_per_token(layers: int, dtype, checkpointing: bool, hidden=256, inter=896, heads=4, kv=2,
                           batch=2, seq=64) -> float:
    """Bytes the forward of a tiny Llama saves for backward (parameters excluded), per token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=inter,
                                         num_hidden_layers=layers, num_attention_heads=heads,
                                         num_key_value_heads=kv, attn_implementation="sdpa")).to(dtype)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 300, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return sum(saved.values()) / (batch * seq)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_layer_activations_match_what_transformers_saves(dtype_name):
    """Per layer and token, the saved tensors of the installed transformers' LlamaDecoderLayer (the slope
    between 2 and 4 layers) equal layer_activation_bytes within 0.5% (a few bytes per token: the attention's
    log-sum-exp and RoPE tables), across hidden, MLP and KV widths; with checkpointing a layer keeps its input."""
    import torch

    dtype, e = getattr(torch, dtype_name), mem.DTYPE_BYTES[dtype_name]
    for hidden, inter, kv in ((256, 896, 2), (512, 896, 2), (256, 1792, 4)):
        slope = (_saved_bytes_per_token(4, dtype, False, hidden, inter, kv=kv)
                 - _saved_bytes_per_token(2, dtype, False, hidden, inter, kv=kv)) / 2
        shape = ModelShape(1, 1, hidden, 1, inter, kv * hidden // 4, 300)
        assert slope == pytest.approx(mem.layer_activation_bytes(shape, dtype_name), rel=0.005)
        kept = (_saved_bytes_per_token(4, dtype, True, hidden, inter, kv=kv)
                - _saved_bytes_per_token(2, dtype, True, hidden, inter, kv=kv)) / 2
        assert kept == e * hidden


def test_activation_figure_for_llama_8b():
    """Micro-batch 2 x 1024 tokens in bf16 with checkpointing: per token 32 layer inputs (2 x 4096 each) + two
    layers of 20 x 4096 + 4 x 1024 + 8 x 14336 = 200,704 bytes + the final norm (8 x 4096) + logits and their
    gradient (2 x 2 x 128256); plus two 64 MiB float32 chunks of the log-prob loss."""
    per_token = 32 * 2 * 4096 + 2 * 200_704 + 8 * 4096 + 4 * 128256
    assert mem.activation_bytes(SHAPE_8B, "bfloat16", 2, 1024, True) == 2048 * per_token + 2 * 64 * 2**20
    without = mem.activation_bytes(SHAPE_8B, "bfloat16", 2, 1024, False)
    assert without == 2048 * (33 * 200_704 + 8 * 4096 + 4 * 128256) + 2 * 64 * 2**20  # about 12.8 GiB


# ----------------------------------------------------------------------------------------------------------------
# The verdict


def test_one_zero3_rank_of_8b_does_not_fit_on_80_gib_and_names_what_would():
    fits, message = mem.memory_verdict(SHAPE_8B, setup(), 80 * GiB, "--gpu-memory-gib=80", "ds_configs/zero3.json",
                                       shipped_choices(), max_ranks=8)
    assert not fits
    need = mem.estimate_rank_memory(SHAPE_8B, setup()).total
    assert need > 145 * GiB  # 136.6 GiB of model states alone
    assert message.startswith(f"each trainer rank needs about {need / GiB:.1f} GiB of GPU memory, more than the "
                              f"GPU has 80.0 GiB (--gpu-memory-gib=80")
    assert "sleeping vLLM engine 3.0" in message and "model states by DeepSpeed's ZeRO-3 estimator" in message
    fixes = message.split("Settings that fit: ")[1]
    assert fixes.startswith("training.num_ranks=4 training.gradient_accumulation_steps=2 (")  # 2 ranks: 79.6 GiB
    assert "training.deepspeed_config=ds_configs/zero3_offload.json (" in fixes
    assert "GiB of host memory per node" in fixes


def test_each_suggested_setting_fits():
    for key, est in mem.fitting_settings(SHAPE_8B, setup(), mem.usable(80 * GiB), "ds_configs/zero3.json",
                                         shipped_choices(), max_ranks=8):
        over = dict(kv.split("=") for kv in key.split())
        ranks = int(over.get("training.num_ranks", 1))
        accum = int(over.get("training.gradient_accumulation_steps", 8))
        assert 2 * accum * ranks == 16, key  # the batch arithmetic still holds
        assert est.total <= mem.usable(80 * GiB)


def test_the_documented_8b_config_fits_on_80_gb_gpus():
    """configs/gsm8k_sft_east_8b.yaml (docs/training.md, README): ZeRO-3 over 8 colocated ranks, micro 2 x 1024.
    Hand-derived: model states 20,169,434,112 + the step's fp32 flatten 4 x 1e9 (sub_group_size) + buckets
    2 x (5e7 + 5e7) + activations 2,610,954,240 + 1 GiB + 3 GiB = 29.1 GiB, under an 80 GB GPU (79 GiB and up)."""
    from east_ds.training.engine import build_ds_config

    cfg = load_config(ROOT / "configs" / "gsm8k_sft_east_8b.yaml")
    s = mem.train_setup(cfg, build_ds_config(cfg.training, cfg.model, cfg.training.num_ranks))
    assert (s.stage, s.ranks, s.offload_optimizer, s.colocated) == (3, 8, False, True)
    est = mem.estimate_rank_memory(SHAPE_8B, s)
    assert est.total == 20_169_434_112 + 4 * 10**9 + 2 * 10**8 + 2_610_954_240 + 4 * GiB
    fits, message = mem.memory_verdict(SHAPE_8B, s, 79 * GiB, "H100", cfg.training.deepspeed_config,
                                       shipped_choices(), 8)
    assert fits and message.startswith("each trainer rank needs about 29.1 GiB of GPU memory, the GPU has 79.0 GiB")


def test_gpu_memory_figure_given_or_from_cuda(monkeypatch):
    assert mem.gpu_memory(40, env={}) == (40 * GiB, "--gpu-memory-gib=40")
    assert mem.gpu_memory(None, env={mem.GPU_MEMORY_ENV: "80"}) == (80 * GiB, f"{mem.GPU_MEMORY_ENV}=80")
    assert mem.gpu_memory(24, env={mem.GPU_MEMORY_ENV: "80"})[0] == 24 * GiB  # the flag wins
    with pytest.raises(ValueError, match=f"{mem.GPU_MEMORY_ENV}='80GB': give the training GPUs' memory in GiB"):
        mem.gpu_memory(None, env={mem.GPU_MEMORY_ENV: "80GB"})
    with pytest.raises(ValueError, match="--gpu-memory-gib=-1"):
        mem.gpu_memory(-1.0, env={})
    import torch

    if not torch.cuda.is_available():
        assert mem.gpu_memory(None, env={}) == (None, "no CUDA device on this machine")


# ----------------------------------------------------------------------------------------------------------------
# End to end: `east-ds check` and `east-ds run` on a Llama-8B-shaped directory without weights


@pytest.fixture(scope="module")
def llama8b_dir(tmp_path_factory) -> Path:
    """config.json of Llama-3.1-8B's shape and a tiny tokenizer: all preflight reads (no safetensors)."""
    from transformers import LlamaConfig

    from east_ds.data.tiny import build_tokenizer

    d = tmp_path_factory.mktemp("llama8b_shape")
    LlamaConfig(**LLAMA_8B).save_pretrained(d)
    build_tokenizer(d)
    assert not list(d.glob("*.safetensors"))
    return d


def _config(tmp: Path, model: Path) -> Path:
    rows = [json.loads(x) for x in (FIX / "gsm8k_sample.jsonl").read_text().splitlines()]
    write_table(pd.DataFrame(rows), tmp / "train.jsonl")
    cfg = yaml.safe_load((ROOT / "configs" / "gsm8k_sft_east.yaml").read_text())  # one ZeRO-3 rank, colocated
    cfg.update(name="m", output_dir=str(tmp / "runs"))
    cfg["model"]["path"] = str(model)
    cfg["data"].update(train=str(tmp / "train.jsonl"), test=str(tmp / "train.jsonl"))
    cfg["training"]["deepspeed_config"] = str(ROOT / "ds_configs" / "zero3.json")
    path = tmp / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_names_the_per_rank_need_and_the_gpus_memory(tmp_path, llama8b_dir, capsys, monkeypatch):
    monkeypatch.delenv(mem.GPU_MEMORY_ENV, raising=False)
    cfg = _config(tmp_path, llama8b_dir)
    assert main(["check", str(cfg), "--no-cluster", "--gpu-memory-gib", "80"]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 1 and problems[0].startswith("  memory    PROBLEM  each trainer rank needs about 14")
    assert "GiB of GPU memory, more than the GPU has 80.0 GiB (--gpu-memory-gib=80" in problems[0]
    assert "ds_configs/zero3_offload.json" in problems[0] and "training.num_ranks=4" in problems[0]
    assert "8,030.3M parameters" in out

    # the first suggested setting passes
    assert main(["check", str(cfg), "training.num_ranks=4", "training.gradient_accumulation_steps=2",
                 "--no-cluster", "--gpu-memory-gib", "80"]) == 0
    assert "memory    ok       each trainer rank needs about" in capsys.readouterr().out

    # without a figure and without CUDA the need is printed, not compared
    import torch

    if not torch.cuda.is_available():
        assert main(["check", str(cfg), "--no-cluster"]) == 0
        assert "not compared: no CUDA device on this machine; give the training GPUs' memory with " \
               "--gpu-memory-gib N" in capsys.readouterr().out


def test_run_refuses_before_claiming_the_run_name(tmp_path, llama8b_dir, monkeypatch):
    from east_ds.checks.preflight import PreflightError
    from east_ds.driver import run

    monkeypatch.setenv(mem.GPU_MEMORY_ENV, "80")
    cfg = load_config(_config(tmp_path, llama8b_dir))
    with pytest.raises(PreflightError, match=r"memory: each trainer rank needs about .* more than the GPU has "
                                             r"80\.0 GiB \(EAST_DS_GPU_MEMORY_GIB=80"):
        run(cfg)
    assert not cfg.run_dir.exists()
