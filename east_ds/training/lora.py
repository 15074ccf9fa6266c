"""LoRA policies for the trainer (`training.lora`): peft adapters on a frozen base model. No DeepSpeed import.

With `training.lora.r > 0` the trainer trains a peft LoRA model with the same per-example weighted losses, and
every export is the adapter alone, in peft's format (`adapter_config.json`, `adapter_model.safetensors`, plus the
tokenizer), so an iteration's checkpoint is megabytes and weight sync moves only the adapter. The adapter names
its base model (`base_model_name_or_path`), so an adapter directory is a complete policy wherever a model path is
expected:

    base_model_path(path)        the base model's path for an adapter directory, else `path` itself
    attach(model, path, cfg, training, seed)
                                 the policy at `path` on top of `model` (the base): the adapter loaded from an
                                 adapter directory (trainable when training), a fresh adapter when training starts
                                 from the base model, the base model as it is otherwise
    merge(adapter, out, dtype)   the base with the adapter merged in: a plain Hugging Face model (no peft needed)

Iteration 1 starts from the base model and a fresh adapter whose B matrices are zero (peft's default init), so the
policy, and the DPO/KTO reference of iteration 1, is exactly the base model. Iteration k > 1 continues the adapter
of iteration k - 1: the base weights never change during a run. The reference log-probs of an iteration are the
policy at its start with its adapter on (training.engine.reference_logprobs loads it through `attach`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from east_ds.config import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter(path: str | Path) -> bool:
    """Whether `path` is a peft adapter directory (it holds adapter_config.json)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_model_path(model_path: str | Path) -> str:
    """The model whose weights load first: an adapter directory's base model, or `model_path` itself."""
    if not is_adapter(model_path):
        return str(model_path)
    base = json.loads((Path(model_path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"{model_path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    return str(base)


def peft_config(cfg: LoraConfig):
    """peft's LoraConfig for `training.lora`: a causal LM, no bias terms (vLLM serves no adapter bias)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none")


def attach(model, model_path: str | Path, cfg: LoraConfig, training: bool, seed: int = 0):
    """The policy at `model_path` on top of `model`, the base model already loaded from base_model_path(model_path).

    An adapter directory: its adapter (trainable when `training`). The base model with `cfg` on and `training`: a
    fresh adapter, initialised under `seed` (every rank builds the same one); its B matrices are zero, so it starts
    as the base model. Otherwise the base model as it is: an adapter of zeros changes no log-prob, so the reference
    of iteration 1 needs none. Gradient checkpointing of a peft model whose embeddings are frozen needs the
    embeddings' output to require grad (peft's `enable_input_require_grads`) when it is reentrant; east_ds's is not,
    and the call is harmless either way."""
    import torch
    from peft import PeftModel, get_peft_model

    if is_adapter(model_path):
        model = PeftModel.from_pretrained(model, str(model_path), is_trainable=training)
    elif cfg.enabled and training:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, peft_config(cfg))
    else:
        return model
    if training:
        model.enable_input_require_grads()
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable parameters, all parameters) of a model."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
          trust_remote_code: bool = False) -> Path:
    """Write the base model with the adapter of `adapter_dir` merged into its weights to `out_dir`: an ordinary
    Hugging Face model directory (config, safetensors, tokenizer) that loads without peft. Written to a temporary
    directory and renamed, so `out_dir` is complete or absent. Loads the base on the CPU (the merge is one
    addition per adapted matrix)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    base = AutoModelForCausalLM.from_pretrained(base_model_path(adapter_dir), dtype=torch_dtype,
                                                trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
