"""Small in-process stand-ins for the driver's heavy parts, behind the same protocols (driver.EnginesLike,
driver.TrainerLike, driver.Backends), so the driver's own logic (resume, skip, metrics, warnings, kills) runs in
seconds. Every path they cover also runs with the real components in test_driver.py / test_placement.py.

The stand-ins are deterministic and their "weights" are content, not paths: a checkpoint is a directory whose
weights.json holds a digest of the starting weights and the examples trained on, and the engines' samples depend
on the digest they loaded. So two runs in different directories produce equal tables, and a resumed run must
produce exactly the tables of an uninterrupted one.

`DIE_INSIDE`: when set (by the kill harness, for one phase), the next stand-in call or table write that reaches
a midpoint SIGKILLs this process, as a crash inside that phase would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pandas as pd

from east_ds.cluster.placement import Placement
from east_ds.schema import REFERENCE_COLUMNS
from east_ds.tables import read_table, write_json, write_table

DIE_INSIDE = {"armed": False}
CALLS: list[tuple[str, str]] = []  # (what, detail) of every stand-in call in this process


def maybe_die() -> None:
    if DIE_INSIDE["armed"]:
        os.kill(os.getpid(), signal.SIGKILL)


def digest(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def weights_of(path: str) -> str:
    f = Path(path) / "weights.json"
    return json.loads(f.read_text())["digest"] if f.is_file() else "base"


class FakeEngines:
    """Samples answers: right with a probability that depends on the question and on the loaded weights."""

    on_gpu = False

    def __init__(self, policy: str, golds: dict[str, str], tokenizer):
        self.weights, self.golds, self.tokenizer = weights_of(policy), golds, tokenizer
        self.locations = [{"engine": 0, "node_ip": "local"}]
        self.events: list[dict] = []

    # -- what rollout.stage calls
    def fits(self, prompt_len: int, max_new_tokens: int) -> str:
        return ""

    @staticmethod
    def request(ids, sampling, seed) -> dict:
        return {"prompt_token_ids": list(ids), "n": sampling.n, "temperature": sampling.temperature, "seed": seed}

    def _samples(self, ids, n: int, seed, greedy: bool) -> list[dict]:
        text = self.tokenizer.decode(ids)
        question = max((q for q in self.golds if q in text), key=len)
        gold = self.golds[question]
        skill = int(digest(question, self.weights)[:4], 16) / 0xFFFF  # this question's chance under these weights
        out = []
        for i in range(n):
            u = int(digest(question, self.weights, seed, i, greedy)[:4], 16) / 0xFFFF
            wrong = int(digest(question, i, self.weights)[4:6], 16) % 3 + 1
            answer = gold if u < skill else f"{gold}{wrong}"
            out.append({"response": f"So the answer is \\boxed{{{answer}}}.", "num_tokens": 8,
                        "finish_reason": "stop", "skip_reason": "", "engine": 0, "seconds": 0.0})
        return out

    def run_shards(self, shards, on_done=None, desc=None) -> dict:
        CALLS.append(("rollout", self.weights))
        done = {}
        for key, reqs in shards:
            done[key] = [self._samples(r["prompt_token_ids"], r["n"], r["seed"], False) for r in reqs]
            if on_done:
                on_done(key, done[key])
            maybe_die()
        return done

    def generate(self, prompt_token_ids, sampling, seeds=None, desc=None) -> list[list[dict]]:
        CALLS.append(("generate", self.weights))
        out = [self._samples(ids, sampling.n, None, True) for ids in prompt_token_ids]
        maybe_die()
        return out

    # -- weight updates, sleep and wake
    def update_weights_from_path(self, path: str) -> dict:
        maybe_die()
        self.weights = weights_of(path)
        CALLS.append(("update", self.weights))
        self.events.append({"t": 0.0, "actor": "engine 0", "event": "update_weights path"})
        return {"seconds": 0.0}

    def sleep(self) -> None:
        maybe_die()
        self.events.append({"t": 0.0, "actor": "engine 0", "event": "sleep"})

    def wake(self, tags=None) -> None:
        maybe_die()
        self.events.append({"t": 0.0, "actor": "engine 0", "event": "wake " + ",".join(tags or [])})

    def drain_events(self) -> list[dict]:
        out, self.events = self.events, []
        return out

    def shutdown(self) -> None:
        pass


class FakeTrainer:
    """Writes what the real trainer writes: reference tables, and an exported checkpoint whose weights digest
    the starting weights and the examples (with their weights) it was trained on."""

    sender = None

    def __init__(self, policy: str, diverge: bool = False):
        self.policy, self.diverge = policy, diverge
        self.locations = [{"rank": 0, "node_ip": "local"}]

    def set_model_path(self, model_path: str) -> None:
        self.policy = model_path

    def reference_logprobs(self, examples_path: str, out_path: str) -> dict:
        CALLS.append(("reference", weights_of(self.policy)))
        df = read_table(examples_path)
        loss = "dpo" if "chosen" in df.columns else "kto"
        for c, col in enumerate(REFERENCE_COLUMNS[loss]):
            df[col] = [-float(int(digest(weights_of(self.policy), q, c)[:4], 16) % 97) for q in df["question_id"]]
        maybe_die()
        write_table(df, out_path)
        return {"rows": len(df)}

    def response_nll(self, examples_path: str, out_path: str) -> dict:
        df = read_table(examples_path)
        df["nll"] = [float(int(digest(weights_of(self.policy), q)[:4], 16) % 50) / 10 + 0.1 for q in df["question_id"]]
        write_table(df, out_path)
        return {"rows": len(df)}

    def fit(self, examples_path: str, out_dir: str, resume: bool = True) -> dict:
        from east_ds.training.divergence import TrainingDiverged

        CALLS.append(("fit", examples_path))
        if self.diverge:
            raise TrainingDiverged("training diverged: iteration 1, step 1: loss nan")
        df = read_table(examples_path)
        content = df[["question_id", "weight"]].round(9).to_csv(index=False)
        out = Path(out_dir)
        write_json({"step": 1}, out / "ds_checkpoint" / "state.json")  # what a resume would continue from
        maybe_die()
        write_json({"digest": digest(weights_of(self.policy), content)}, out / "hf" / "weights.json")
        summary = {"steps": 2, "examples": len(df), "loss": round(float(df["weight"].sum()) / len(df), 9)}
        write_json(summary, out / "train_summary.json")
        return summary

    def drain_events(self) -> list[dict]:
        return []

    def shutdown(self) -> None:
        pass


class FakeBackends:
    """driver.Backends with the stand-ins; the cluster is this process (no Ray), without GPUs."""

    def __init__(self, golds: dict[str, str], diverge: bool = False):
        self.golds, self.diverge = golds, diverge

    def connect(self, cfg, run_dir):
        return Placement.of(cfg, 0), True

    def start_engines(self, cfg, placement, policy):
        from east_ds.data.load import load_tokenizer

        return FakeEngines(policy, self.golds, load_tokenizer(cfg.model.path))

    def start_trainer(self, cfg, placement, policy, engines=None):
        maybe_die()
        return FakeTrainer(policy, self.diverge)


def tiny_task(root: Path, train_seed: int, test_seed: int) -> tuple[Path, dict[str, str]]:
    """A tiny model and a synthetic task under `root` (train.jsonl: 12 questions, test.jsonl: 6); returns the
    model directory and every question's gold answer (what FakeEngines answers from)."""
    from east_ds.data.synthetic import make_problems, to_gsm8k_rows
    from east_ds.data.tiny import build_tiny_model

    model = build_tiny_model(root / "model")
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(12, seed=train_seed, prefix="tr"))), root / "train.jsonl")
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(6, seed=test_seed, prefix="te"))), root / "test.jsonl")
    return model, golds_of(root / "train.jsonl") | golds_of(root / "test.jsonl")


def golds_of(path: str | Path) -> dict[str, str]:
    """question text -> gold answer of a GSM8K-format JSONL file."""
    from east_ds.data.load import load_dataset

    df = load_dataset(str(path), "gsm8k")
    return dict(zip(df["question"], df["gold"]))


def table_digests(run_dir: Path) -> dict[str, str]:
    """Every table and checkpoint of a run, by path relative to the run, as a digest of its content (what a
    resumed run must reproduce); timing columns are left out."""
    out = {}
    for f in sorted(run_dir.rglob("*")):
        rel = str(f.relative_to(run_dir))
        if f.suffix == ".parquet" and "/shards/" not in f"/{rel}":
            df = pd.read_parquet(f).drop(columns=["seconds"], errors="ignore")
            out[rel] = digest(df.to_csv(index=False))
        elif f.name == "weights.json":
            out[rel] = f.read_text()
    return out
