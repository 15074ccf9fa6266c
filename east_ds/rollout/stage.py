"""Rollout and evaluation stages: questions in, a Parquet table of sampled (or greedy) responses out.

run_rollout  n samples per question (EAST step 1) -> out_dir/rollouts.parquet, one row per sample
run_eval     greedy, one sample per question, graded  -> eval.parquet, {"accuracy", "n", "n_skipped"}

Resume. A rollout is cut into shards of `cfg.shard_size` questions; each finished shard is written atomically to
out_dir/shards/shard_NNNNN.parquet as it arrives, then all are consolidated into rollouts.parquet. A rerun after a
crash generates only the shards whose files are missing. shards/manifest.json records the settings and the
question ids; a rerun with different ones is an error rather than a silent mix of two rollouts.

Seeds. Question j of shard k is sampled with seed hash(cfg.seed, k, j) (vLLM's per-request seed; sample i of
the question uses seed + i inside vLLM), so a shard's samples do not depend on which engine ran it and a retried
or regenerated shard reproduces them. Hashing keeps the seed ranges of different questions apart. This is
`rollout.seed_per_request`, on by default on CPU engines and off on GPU engines, where vLLM samples seeded requests
one at a time in Python (device_plan.rollout_defaults); unseeded rows record seed -1.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from east_ds.config import RolloutConfig
from east_ds.data.load import SYSTEM_PROMPT, render_prompt
from east_ds.cluster.device_plan import rollout_defaults
from east_ds.rollout.engine_pool import EnginePool, Sampling, skip_record
from east_ds.schema import ROLLOUT_COLUMNS
from east_ds.tables import read_table, write_json, write_table

EXTRA_COLUMNS = ("engine", "seconds", "skip_reason", "seed")


def request_seed(seed: int, shard: int, position: int) -> int:
    """The vLLM seed of question `position` in shard `shard`: a stable 31-bit hash, not seed + something."""
    h = hashlib.sha256(f"east-rollout:{seed}:{shard}:{position}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _prompts(questions: pd.DataFrame, tokenizer, system_prompt: str) -> tuple[list[str], list[list[int]]]:
    texts = [render_prompt(tokenizer, q, system_prompt) for q in questions["question"].astype(str)]
    # The rendered prompt already holds the template's BOS (data.render_prompt).
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return texts, ids


def _rows(q: dict, prompt: str, samples: list[dict], seed: int | None) -> list[dict]:
    return [
        {"question_id": str(q["question_id"]), "sample_index": i, "question": str(q["question"]),
         "gold": str(q["gold"]), "prompt": prompt, "response": s["response"], "num_tokens": int(s["num_tokens"]),
         "finish_reason": s["finish_reason"], "engine": int(s["engine"]), "seconds": float(s["seconds"]),
         "skip_reason": s.get("skip_reason", ""), "seed": -1 if seed is None else int(seed)}
        for i, s in enumerate(samples)
    ]


def _shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / "shards" / f"shard_{k:05d}.parquet"


@dataclass
class _Shards:
    """What writing a shard's table needs: per question (in question order) its record, rendered prompt and vLLM
    seed; the shard size and samples per question; and, filled by _shard_requests, the questions skipped as too
    long (with the reason) and those sent to an engine, per shard in request order."""

    out_dir: Path
    size: int
    n: int
    records: list[dict]
    prompts: list[str]
    seeds: list[int | None]
    skipped: dict[int, str] = field(default_factory=dict)
    sent: dict[int, list[int]] = field(default_factory=dict)

    def questions(self, k: int) -> range:
        """The question positions of shard k."""
        return range(k * self.size, min((k + 1) * self.size, len(self.records)))


def run_rollout(
    pool: EnginePool,
    questions: pd.DataFrame,
    tokenizer,
    cfg: RolloutConfig,
    out_dir: str | Path,
    system_prompt: str = SYSTEM_PROMPT,
) -> pd.DataFrame:
    """Sample cfg.n responses per question; write out_dir/rollouts.parquet (ROLLOUT_COLUMNS + EXTRA_COLUMNS).

    `questions` has question_id, question, gold. Resumable (see the module docstring). Rows are in question
    order, then sample_index. The returned frame's `attrs["stats"]` (also out_dir/rollout_stats.json) counts the
    shards generated and reused, tokens and seconds.
    """
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    questions = questions.reset_index(drop=True)
    sampling = _sampling(cfg)
    size = max(1, cfg.shard_size)
    num_shards = (len(questions) + size - 1) // size
    _check_manifest(out_dir, _manifest(questions, cfg, size, num_shards, system_prompt))

    prompts, ids = _prompts(questions, tokenizer, system_prompt)
    records = questions.to_dict("records")
    missing = [k for k in range(num_shards) if not _shard_path(out_dir, k).is_file()]
    seeds = _seeds(pool, cfg, len(questions))
    shards = _Shards(out_dir, size, cfg.n, records, prompts, seeds)
    requests = _shard_requests(pool, shards, ids, missing, sampling)

    for k, reqs in requests:
        if not reqs:  # every question of the shard skipped
            _write_shard(shards, k, [])
    pool.run_shards([(k, r) for k, r in requests if r], on_done=partial(_write_shard, shards), desc="rollout")
    return _consolidate(out_dir, questions, cfg.n, num_shards, missing, t0)


def rollout_requests(pool: EnginePool, questions: pd.DataFrame, tokenizer, cfg: RolloutConfig,
                     system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The engine requests `run_rollout` sends for `questions`, in question order, with the same per-question
    seeds; questions too long to fit are left out. `east-ds bench` runs them in one raw `generate` call on one
    engine: the limit the pool's rollout is measured against."""
    questions = questions.reset_index(drop=True)
    sampling = _sampling(cfg)
    _, ids = _prompts(questions, tokenizer, system_prompt)
    return [pool.request(x, sampling, seed) for x, seed in zip(ids, _seeds(pool, cfg, len(ids)))
            if not pool.fits(len(x), sampling.max_new_tokens)]


def _sampling(cfg: RolloutConfig) -> Sampling:
    return Sampling(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)


def _seeds(pool: EnginePool, cfg: RolloutConfig, count: int) -> list[int | None]:
    """The vLLM seed of each of `count` questions in order (shards of cfg.shard_size), or all None when the
    rollout is unseeded (`rollout.seed_per_request`, by default by the engines' device)."""
    size = max(1, cfg.shard_size)
    seeded = rollout_defaults(pool.on_gpu, False, seed_per_request=cfg.seed_per_request).seed_per_request
    return [request_seed(cfg.seed, j // size, j % size) if seeded else None for j in range(count)]


def _manifest(questions: pd.DataFrame, cfg: RolloutConfig, size: int, num_shards: int, system_prompt: str) -> dict:
    """The settings and question ids (hashed) that decide a rollout's shards: what shards/manifest.json holds."""
    return {
        "n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed, "shard_size": size, "system_prompt": system_prompt, "num_shards": num_shards,
        "question_ids": hashlib.sha256("\n".join(questions["question_id"].astype(str)).encode()).hexdigest(),
    }


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """Write out_dir/shards/manifest.json on the first call; on a rerun, refuse shards that were made with other
    settings or questions (a silent mix of two rollouts otherwise), naming the keys that differ."""
    manifest_path = out_dir / "shards" / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise ValueError(f"{out_dir}: existing shards were made with different settings ({diff}); "
                             f"use another out_dir or delete {out_dir / 'shards'}")
    else:
        write_json(manifest, manifest_path)


def _shard_requests(pool: EnginePool, shards: _Shards, ids: list[list[int]], missing: list[int],
                    sampling: Sampling) -> list[tuple[int, list[dict]]]:
    """The engine requests of each missing shard, as (shard, requests). A prompt too long to fit is recorded in
    `shards.skipped` without an engine call; the questions sent are recorded per shard in `shards.sent`."""
    out = []
    for k in missing:
        reqs, sent = [], []
        for j in shards.questions(k):
            reason = pool.fits(len(ids[j]), sampling.max_new_tokens)
            if reason:
                shards.skipped[j] = reason
            else:
                reqs.append(pool.request(ids[j], sampling, shards.seeds[j]))
                sent.append(j)
        out.append((k, reqs))
        shards.sent[k] = sent
    return out


def _write_shard(shards: _Shards, k: int, results: list[list[dict]]) -> None:
    """Write shard k's table (every question's samples, skipped ones as skip records) from the engine's results
    for the questions it was sent; run_shards calls it as each shard finishes."""
    by_q = dict(zip(shards.sent[k], results))
    rows = []
    for j in shards.questions(k):
        if j in shards.skipped:
            samples = [skip_record(shards.skipped[j]) for _ in range(shards.n)]
        else:
            samples = by_q[j]
        rows += _rows(shards.records[j], shards.prompts[j], samples, shards.seeds[j])
    write_table(pd.DataFrame(rows, columns=list(ROLLOUT_COLUMNS + EXTRA_COLUMNS)), _shard_path(shards.out_dir, k))


def _consolidate(out_dir: Path, questions: pd.DataFrame, n: int, num_shards: int, missing: list[int],
                 t0: float) -> pd.DataFrame:
    """Join the shard tables into out_dir/rollouts.parquet (checked complete and in order), then count shards,
    rows, skipped questions, tokens and seconds since `t0` into out_dir/rollout_stats.json and attrs["stats"]."""
    df = pd.concat([read_table(_shard_path(out_dir, k)) for k in range(num_shards)], ignore_index=True)
    _check_complete(df, questions, n)
    write_table(df, out_dir / "rollouts.parquet")
    gen = df[df["finish_reason"] != "skipped"]
    seconds = time.perf_counter() - t0
    stats = {
        "shards_total": num_shards, "shards_generated": len(missing), "shards_reused": num_shards - len(missing),
        "generated_shard_ids": missing, "rows": len(df), "skipped_questions": int((df["finish_reason"] == "skipped")
                                                                                  .sum() // max(n, 1)),
        "num_tokens": int(gen["num_tokens"].sum()), "seconds": seconds,
    }
    write_json(stats, out_dir / "rollout_stats.json")
    df.attrs["stats"] = stats
    return df


def _check_complete(df: pd.DataFrame, questions: pd.DataFrame, n: int) -> None:
    """Every (question, sample) exactly once, in question order."""
    expect = [(str(q), i) for q in questions["question_id"] for i in range(n)]
    got = list(zip(df["question_id"].astype(str), df["sample_index"].astype(int)))
    if got != expect:
        raise RuntimeError(f"rollout table has {len(got)} rows, expected {len(expect)} (question, sample) pairs "
                           "in order; delete the shards directory and rerun")


def run_eval(
    pool: EnginePool,
    questions: pd.DataFrame,
    tokenizer,
    max_new_tokens: int,
    out_path: str | Path,
    system_prompt: str = SYSTEM_PROMPT,
) -> dict:
    """Greedy decoding (temperature 0, one sample), graded with east_ds.grading.grade; writes `out_path`.

    The table has the rollout columns plus `answer` (extracted final answer, "none" when there is none) and
    `correct`. A skipped (too long) question counts as wrong. Returns {"accuracy", "n", "n_skipped"}.
    """
    from east_ds.grading import extract_answer, grade_answer

    questions = questions.reset_index(drop=True)
    prompts, ids = _prompts(questions, tokenizer, system_prompt)
    results = pool.generate(ids, Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens), desc="eval")
    rows = []
    for q, prompt, samples in zip(questions.to_dict("records"), prompts, results):
        rows += _rows(q, prompt, samples, None)
    df = pd.DataFrame(rows, columns=list(ROLLOUT_COLUMNS + EXTRA_COLUMNS))
    answers, correct = [], []
    for resp, gold, fin in zip(df["response"], df["gold"], df["finish_reason"]):
        ans = extract_answer(resp) if fin != "skipped" and resp else None
        answers.append("none" if ans is None else ans)
        correct.append(grade_answer(ans, gold))  # the same verdict as grade(resp, gold), extracting once
    df["answer"], df["correct"] = answers, correct
    write_table(df, out_path)
    n = len(df)
    return {"accuracy": float(sum(correct)) / n if n else 0.0, "n": n,
            "n_skipped": int((df["finish_reason"] == "skipped").sum())}
