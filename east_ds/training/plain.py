"""A plain DeepSpeed training step on east_ds's own batches: the yardstick `east-ds bench` measures training
against.

The same DeepSpeed engine (TrainingEngine: the run's ZeRO stage, precision, optimizer, LoRA), the same examples,
step plan and micro-batches as `fit`, but each micro-batch is only forward (HF's own mean cross-entropy over the
response tokens), backward and step: no per-example weights or losses, no KTO reference point, no all-reduced
metrics, no logging or checkpoint. What east_ds's step costs beyond it is the price of the weighted losses and the
bookkeeping.
"""

from __future__ import annotations

import time

import torch

from east_ds.config import ModelConfig, TrainConfig
from east_ds.training import batches as td
from east_ds.training.engine import TrainingEngine, _schedule


def plain_steps(model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, examples_path: str,
                steps: int) -> dict:
    """Run the first `steps` steps of `fit`'s plan as plain steps; returns {steps, tokens, seconds} (tokens: real
    tokens forwarded by all ranks; seconds: the steps alone, engine start excluded, as fit's step_time)."""
    import deepspeed.comm as dist

    sched = _schedule(model_path, train_cfg, model_cfg, examples_path)
    eng = TrainingEngine(model_path, train_cfg, model_cfg, total_steps=sched.total)
    try:
        steps = min(steps, sched.total)
        tokens = torch.zeros(1, dtype=torch.float64)
        t0 = time.perf_counter()
        for s in range(steps):
            for idx in td.rank_micro_batches(sched.steps[s], eng.rank, eng.world):
                mb = td.micro_batch_tensors(sched.ex, idx, eng.pad_id)
                tokens += _plain_micro_step(eng, mb)
        seconds = time.perf_counter() - t0
        tokens = tokens.to(eng.engine.device)
        dist.all_reduce(tokens)
    finally:
        eng.close()
    return {"steps": steps, "tokens": int(tokens.item()), "seconds": seconds}


def _plain_micro_step(eng: TrainingEngine, mb: dict) -> float:
    """Forward, backward and step of one micro-batch's sequences with HF's causal-LM loss on the loss-masked
    tokens; returns the real tokens forwarded. KTO's KL column is not forwarded: that forward is part of east_ds's
    cost here."""
    dev = eng.engine.device
    labels = mb["input_ids"].masked_fill(~mb["loss_mask"].bool(), -100)
    loss = eng.engine(input_ids=mb["input_ids"].to(dev), attention_mask=mb["attention_mask"].to(dev),
                      labels=labels.to(dev), use_cache=False).loss
    eng.engine.backward(loss)
    eng.engine.step()
    return float(mb["attention_mask"].sum())
