"""The run directory: where each phase's output lives, and whether it is finished.

    runs/<name>/config.yaml            the resolved config (a rerun with a different config is refused)
    runs/<name>/metrics.jsonl          one line per finished iteration, rebuilt from the iterations' metrics.json
    runs/<name>/iter_0/                evaluation of the starting model
    runs/<name>/iter_<k>/shards/, rollout_stats.json, rollouts.parquet, graded.parquet, questions.parquet,
                         examples.parquet, diagnosis.parquet, [perplexity_in.parquet, perplexity.parquet],
                         [reference.parquet], train/ (DeepSpeed checkpoints, resumable), checkpoint/
                         (Hugging Face layout; a peft adapter in LoRA runs), [merged/ (LoRA, last iteration)],
                         eval.parquet, metrics.json   (every one a path of IterDir)

Every file is written atomically (temp file + rename) and `checkpoint/` is renamed into place whole, so "the
output exists" means "the phase finished": a rerun after a crash skips finished phases and redoes only the rest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from east_ds.config import RunConfig, to_dict
from east_ds.tables import read_jsonl, write_json


# Config keys a resume may change: they say how many iterations, where the actors run and how they talk, and
# where metrics go, never what an iteration computes. So a run stopped on one cluster (or with a lost node) goes
# on with another placement, and a finished run can be extended.
RESUMABLE_KEYS = ("iterations", "logging", "placement", "rollout.weight_sync")
# Optimizer settings a resume may also change, but only while the iteration the run stopped in has not finished
# training (say, after its training diverged: training.divergence): that iteration's partial training (`train/`)
# is removed and starts again from its starting policy with the new settings. The checkpoints already published
# keep what they were trained with; each iteration's metrics record it (train.optimizer).
RETRAIN_KEYS = ("training.lr", "training.warmup_ratio", "training.grad_clip", "training.weight_decay",
                "training.adam_betas", "training.adam_eps")


class RunDirError(RuntimeError):
    """The run directory holds a different run."""


@dataclass(frozen=True)
class IterDir:
    path: Path

    @property
    def rollouts(self) -> Path:
        return self.path / "rollouts.parquet"

    @property
    def questions(self) -> Path:
        return self.path / "questions.parquet"

    @property
    def examples(self) -> Path:
        return self.path / "examples.parquet"

    @property
    def shards(self) -> Path:
        """The rollout's shards, each written as soon as its samples are done (a resumed rollout keeps them)."""
        return self.path / "shards"

    @property
    def rollout_stats(self) -> Path:
        return self.path / "rollout_stats.json"

    @property
    def graded(self) -> Path:
        return self.path / "graded.parquet"

    @property
    def diagnosis(self) -> Path:
        return self.path / "diagnosis.parquet"

    @property
    def perplexity_in(self) -> Path:
        """The perplexity baseline's selected responses, scored by the trainer into `perplexity`."""
        return self.path / "perplexity_in.parquet"

    @property
    def perplexity(self) -> Path:
        return self.path / "perplexity.parquet"

    @property
    def reference(self) -> Path:
        """DPO/KTO: the examples the trainer could tokenise, with the starting policy's log-probs (the reference
        phase's own table; `examples` is never rewritten). What DPO/KTO training reads."""
        return self.path / "reference.parquet"

    @property
    def train(self) -> Path:
        return self.path / "train"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def merged(self) -> Path:
        """LoRA runs, last iteration: the base model with the adapter merged in (a plain HF model)."""
        return self.path / "merged"

    @property
    def eval(self) -> Path:
        return self.path / "eval.parquet"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def phase_metrics(self, phase: str) -> Path:
        """What phase `phase` returned, kept beside its output (metrics.Phases), so a resumed iteration's metrics
        equal an uninterrupted one's."""
        return self.path / "phases" / f"{phase.replace(' ', '_')}.json"


class RunDir:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.path = cfg.run_dir

    def iteration(self, k: int) -> IterDir:
        return IterDir(self.path / f"iter_{k}")

    def claim(self) -> None:
        """Write config.yaml, or check that an existing one describes the same run (a resume). Keys under
        RESUMABLE_KEYS may change on a resume, and those of RETRAIN_KEYS while the iteration the run stopped in
        has not finished training (its `train/` is then removed); a directory with no iteration output yet may be
        claimed by any config."""
        self.path.mkdir(parents=True, exist_ok=True)
        mine = to_dict(self.cfg)
        f = self.path / "config.yaml"
        if f.exists():
            theirs = yaml.safe_load(f.read_text()) or {}
            diff = [d for d in _diff(theirs, mine) if not _under(d, RESUMABLE_KEYS)]
            retrain = [d for d in diff if _under(d, RETRAIN_KEYS)]
            k = self.unfinished_training() if retrain else None
            if k is not None:
                diff = [d for d in diff if d not in retrain]
            # A directory in which no phase has written anything holds no run yet (e.g. a start that failed
            # before its first phase): the new config takes its place.
            if diff and any(self.path.glob("iter_*")):
                why = (f"; {', '.join(retrain)} may change only while the iteration a run stopped in has not "
                       "finished training" if retrain and k is None else "")
                raise RunDirError(
                    f"{self.path} holds a run with a different config (keys {diff}){why}; "
                    "use another `name=` or `output_dir=`, or delete the directory"
                )
            if k is not None and self.iteration(k).train.exists():
                shutil.rmtree(self.iteration(k).train)
                print(f"[east-ds] {', '.join(retrain)} changed: iteration {k}'s training starts again from its "
                      "starting policy", flush=True)
        tmp = f.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(mine, sort_keys=False))
        os.replace(tmp, f)

    def policy_path(self) -> str:
        """The latest finished checkpoint, or the starting model."""
        k = self.last_checkpoint()
        return str(self.iteration(k).checkpoint) if k > 0 else self.cfg.model.path

    def last_checkpoint(self) -> int:
        k = 0
        while self.iteration(k + 1).checkpoint.is_dir():
            k += 1
        return k

    def unfinished_training(self) -> int | None:
        """The iteration the run stopped in when its training has not finished: the first one without a published
        checkpoint, if it has begun (its directory exists). None between iterations or after the last."""
        k = self.last_checkpoint() + 1
        return k if self.iteration(k).path.is_dir() else None

    def publish_checkpoint(self, it: IterDir, exported: Path) -> None:
        """Move the trainer's Hugging Face export into `checkpoint/` in one rename."""
        if it.checkpoint.exists():
            shutil.rmtree(it.checkpoint)
        os.replace(exported, it.checkpoint)

    def write_iteration_metrics(self, it: IterDir, metrics: dict) -> None:
        write_json(metrics, it.metrics)
        self.rebuild_metrics_log()

    def rebuild_metrics_log(self) -> None:
        """metrics.jsonl from the iterations' metrics.json: rebuilt, never appended, so a rerun adds no duplicates."""
        lines = []
        k = 0
        while self.iteration(k).path.is_dir():
            m = self.iteration(k).metrics
            if m.is_file():
                lines.append(json.dumps(json.loads(m.read_text()), sort_keys=True))
            k += 1
        tmp = self.path / "metrics.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path / "metrics.jsonl")

    def metrics_log(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")


def iteration_number(path: str | Path) -> int | None:
    """k when `path` is `iter_<k>` or directly inside it (such as an iteration's `train/`), else None."""
    for part in (Path(path).name, Path(path).parent.name):
        if part.startswith("iter_") and part[5:].isdigit():
            return int(part[5:])
    return None


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]
