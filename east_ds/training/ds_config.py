"""The DeepSpeed config of a training call, generated from TrainConfig and ModelConfig (no DeepSpeed import).

The JSON that `training.deepspeed_config` names holds ZeRO policy only; batch sizes, optimizer, schedule and
clipping come from TrainConfig, precision from ModelConfig.dtype (cluster.device_plan.precision_sections).

    build_ds_config(train_cfg, model_cfg, world_size, training=True) -> dict
    linear_schedule(total_steps, warmup_ratio) -> step -> LR multiplier
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from east_ds.cluster import device_plan as plan
from east_ds.config import ModelConfig, TrainConfig, check_batch_sizes

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_DS_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                     "optimizer", "scheduler", "gradient_clipping")


def resolve_path(p: str) -> Path:
    """A DeepSpeed JSON path as given, else relative to the repository root."""
    q = Path(p)
    if q.is_file() or q.is_absolute():
        return q
    return REPO_ROOT / q


def build_ds_config(train_cfg: TrainConfig, model_cfg: ModelConfig, world_size: int, training: bool = True) -> dict:
    """The full DeepSpeed config: ZeRO policy from the JSON, everything else generated from the configs."""
    path = resolve_path(train_cfg.deepspeed_config)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {train_cfg.deepspeed_config!r} not found (looked at {path})")
    cfg = json.loads(path.read_text())
    bad = [k for k in FORBIDDEN_DS_KEYS if k in cfg]
    if bad:
        raise ValueError(f"{path}: sets {bad}; batch sizes, optimizer, schedule and clipping come from TrainConfig "
                         f"(training.*), the JSON holds ZeRO policy only")
    check_batch_sizes(train_cfg, world_size)
    m, g, B = train_cfg.micro_batch_size, train_cfg.gradient_accumulation_steps, train_cfg.global_batch_size
    want_bf16, want_fp16 = model_cfg.dtype == "bfloat16", model_cfg.dtype == "float16"
    for key, want in (("bf16", want_bf16), ("fp16", want_fp16)):
        if key in cfg and bool(cfg[key].get("enabled", False)) != want:
            raise ValueError(f"{path}: {key}.enabled disagrees with model.dtype={model_cfg.dtype!r}; "
                             f"leave precision to model.dtype")
    cfg.update(train_micro_batch_size_per_gpu=m, gradient_accumulation_steps=g, train_batch_size=B)
    zero = cfg.setdefault("zero_optimization", {"stage": 0})
    if "data_types" in cfg:
        raise ValueError(f"{path}: sets data_types; the precision policy comes from model.dtype "
                         f"(device_plan.precision_sections)")
    cfg.update(plan.precision_sections(model_cfg.dtype, zero.get("stage", 0) if training else 0))
    if training:
        offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
        cfg["optimizer"] = {"type": "AdamW", "params": {
            "lr": train_cfg.lr, "betas": list(train_cfg.adam_betas), "eps": train_cfg.adam_eps,
            "weight_decay": train_cfg.weight_decay,
            # torch's AdamW needs no compilation; offloaded optimizers need DeepSpeed's CPUAdam
            **({} if offload else {"torch_adam": True}),
        }}
        cfg["gradient_clipping"] = train_cfg.grad_clip
    elif zero.get("stage", 0) != 3:
        cfg["zero_optimization"] = {"stage": 0}  # a no-grad forward needs no optimizer sharding
    return cfg


def linear_schedule(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warmup over ceil(ratio x total) steps, then linear decay to 0 at total_steps.
    Step 0 uses (1 / (warmup + 1)) when warming up, 1 when not."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f
