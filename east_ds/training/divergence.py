"""A diverged training step: what counts as one, the error that stops training, and the record it leaves.

A step diverged when its loss or its global gradient norm is not finite (NaN or infinite). DeepSpeed does not stop
on it: under ZeRO 1-3 (deepspeed/runtime/zero/stage_1_and_2.py and stage3.py, `step`: an invalid norm is an
"overflow") and with its bf16 optimizer (bf16_optimizer.py, `step`) it skips the step, reports a norm of inf and
goes on, so the weights that the steps before made, already ruined, are exported; with ZeRO 0 in fp32 it clips the
NaN gradients and applies them. Trained at training.lr=1e8 the demo's policy reached a test accuracy of 0 while
the run exited 0. Only fp16's dynamic loss scaling skips steps as a matter of course (an overflow lowers the scale,
the weights stay as they were): such a step is no divergence unless its loss itself is not finite.

On a diverged step `training.engine.fit` stops on every rank (the ranks agree through one all-reduce, so none is
left waiting in the next collective), writes nothing further, and raises TrainingDiverged. Rank 0 first records
the step in `out_dir/diverged.json` and removes the DeepSpeed checkpoint, so that no later call resumes from the
state that led there: the next call in that directory trains again from its `model_path`.

    problems(loss, grad_norm, skipped_by_loss_scaling) -> ["loss nan", ...]   ([] for a sound step)
    agree(found, device) -> found, or a problem on every rank when any rank has one
    diverged_error(...) -> TrainingDiverged                                      (the message says what to change)
    record(out_dir, error) / forget(out_dir)                                     (rank 0's file work)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from east_ds.rundir import iteration_number

RECORD = "diverged.json"
CHECKPOINT = "ds_checkpoint"  # training.engine.fit's DeepSpeed checkpoint directory


class TrainingDiverged(RuntimeError):
    """A training step's loss or gradient norm was not finite; the message names the step and what to change.
    Crosses the Ray actor boundary intact (pickled with its fields)."""

    def __init__(self, message: str, step: int | None = None, loss: float | None = None,
                 grad_norm: float | None = None):
        super().__init__(message)
        self.step, self.loss, self.grad_norm = step, loss, grad_norm

    def __reduce__(self):
        return type(self), (str(self), self.step, self.loss, self.grad_norm)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def problems(loss: float, grad_norm: float | None, skipped_by_loss_scaling: bool = False) -> list[str]:
    """What is not finite in one step: [] for a sound step. `grad_norm` None: DeepSpeed computed none (nothing to
    check). `skipped_by_loss_scaling`: fp16's loss scaler skipped the step on an overflow (weights unchanged), so
    an infinite gradient norm is its business; a non-finite loss still counts."""
    found = [] if _finite(loss) else [f"loss {loss}"]
    if grad_norm is not None and not _finite(grad_norm) and not skipped_by_loss_scaling:
        found.append(f"gradient norm {grad_norm}")
    return found


def agree(found: list[str], device) -> list[str]:
    """`found` on this rank -> what every rank returns: non-empty on all ranks when any rank found a problem (one
    max all-reduce of a flag on `device`, in the default process group, which DeepSpeed's communication uses),
    since a rank that stopped alone would leave the others waiting in the next collective. A lone process (no
    process group) returns `found`."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return found
    flag = torch.tensor([1.0 if found else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return found or (["a non-finite loss or gradient norm on another rank"] if flag.item() > 0 else [])


def diverged_error(out_dir: str | Path, examples_path: str, step: int, total: int, found: list[str],
                   step_lr: float, train_lr: float, loss: float | None = None,
                   grad_norm: float | None = None) -> TrainingDiverged:
    """The error for step `step` (1-based) of `total`: one paragraph naming the iteration (when `out_dir` is an
    iteration's `train/`), the step, its values, what was kept, what to change, and that rerunning resumes."""
    k = iteration_number(out_dir)
    where = f"in iteration {k} " if k is not None else ""
    again = (f"the run resumes, and iteration {k}'s training starts again from the iteration's starting policy"
             if k is not None else "training starts again from the starting model")
    message = (
        f"training diverged {where}at step {step} of {total}: {', '.join(found)} (learning rate {step_lr:g} at "
        f"this step). Training stopped there and nothing of it was published: no checkpoint was exported, so the "
        f"next policy is still the one this training started from, and {out_dir} keeps the step log "
        f"(metrics.jsonl, {RECORD}) but no state to resume from. Lower training.lr (now {train_lr:g}) or raise "
        f"training.warmup_ratio, or look for broken rows in {examples_path}, then rerun the same command: {again}.")
    return TrainingDiverged(message, step=step, loss=loss, grad_norm=grad_norm)


def record(out_dir: str | Path, error: TrainingDiverged) -> None:
    """Rank 0, on divergence: write `diverged.json` (the step, its values, the message), then remove the DeepSpeed
    checkpoint. In that order, so a kill in between still leaves the record that `forget` acts on."""
    out = Path(out_dir)
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps({"step": error.step, "loss": error.loss, "grad_norm": error.grad_norm,
                               "message": str(error)}, indent=1))
    os.replace(tmp, out / RECORD)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)


def forget(out_dir: str | Path) -> dict | None:
    """Rank 0, before a new call trains in `out_dir`: when an earlier call diverged there, remove what it left (a
    DeepSpeed checkpoint whose removal a kill interrupted, then the record) and return the record; else None."""
    out = Path(out_dir)
    f = out / RECORD
    if not f.is_file():
        return None
    earlier = json.loads(f.read_text())
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    f.unlink()
    return earlier
