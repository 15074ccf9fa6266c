"""The EAST core: grade and cluster each question's answers, entropy, filters, and the mapping function.

Pure: imports no Ray, vLLM, DeepSpeed or torch. docs/method.md section 1, steps 2-6, and section 2:

    p_k  = |cluster k| / n                                 (answers of one question, clustered)
    h(x) = - sum_k p_k log p_k                             (natural log; any base cancels in f)
    f(h_i; a) = h_i^a * N / sum_j h_j^a                    (over the N questions that survive the filter)

A question is dropped when every response is wrong (nothing to learn) or every response is correct (h = 0,
which a < 0 could not raise to a power). The baselines of docs/method.md section 4 use the same normalisation with a
different uncertainty value: accuracy-based 1 - A(x), rejected-based R(x), perplexity-based mean token NLL,
learnability p(1 - p) and the mid-difficulty band indicator (p = share of correct samples).
VALUES holds them, one row each; config.WeightingConfig.value names the same ones (tests/test_config.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

class WeightingError(ValueError):
    """Rollouts that cannot be weighted; the message names the question or column."""


def _column(questions: pd.DataFrame, name: str) -> np.ndarray:
    if name not in questions.columns:
        raise WeightingError(f"uncertainty value {name!r} needs a per-question {name!r} column; "
                             f"found {list(questions.columns)}")
    return questions[name].to_numpy(dtype=np.float64)


def _learnability(questions: pd.DataFrame) -> np.ndarray:
    """p(1 - p) with p = n_correct / n, the variance of a question's 0/1 reward (docs/method.md section 4)."""
    p = _column(questions, "n_correct") / _column(questions, "n")
    return p * (1.0 - p)


BAND = (0.25, 0.75)  # the `band` value's share of correct samples, both ends included (4 to 12 of 16)


def _band(questions: pd.DataFrame) -> np.ndarray:
    """1.0 for a question whose share of correct samples p lies in BAND, else 0.0 (docs/method.md section 4)."""
    p = _column(questions, "n_correct") / _column(questions, "n")
    return ((p >= BAND[0]) & (p <= BAND[1])).astype(np.float64)


@dataclass(frozen=True)
class ValueSpec:
    """An uncertainty value: what the mapping function raises to the power a, one per kept question."""

    of: Callable[[pd.DataFrame], np.ndarray]  # the kept rows of the questions table -> the values (> 0)
    needs_trainer: bool = False  # a model scores each question's selected response first: weighting.stage.weigh
    # calls its `perplexity` argument and stores the scores in the column named like the value
    indicator: bool = False  # values are 0 or 1: with a > 0, 0^a = 0, so a question outside the set gets weight
    # 0 and the others N / (questions inside); a = 0 is vanilla; a < 0 (0^a undefined) is refused


# Adding a value: one row here (and its name in config.WeightingConfig.value); tests/test_config.py checks both.
VALUES: dict[str, ValueSpec] = {
    "entropy": ValueSpec(lambda q: _column(q, "entropy")),  # h(x) over the answer clusters (EAST)
    "accuracy": ValueSpec(lambda q: 1.0 - _column(q, "accuracy")),  # 1 - A(x), the share of wrong responses
    "rejected": ValueSpec(lambda q: _column(q, "rejected")),  # R(x), the largest wrong-answer cluster's share
    "perplexity": ValueSpec(lambda q: _column(q, "perplexity"), needs_trainer=True),  # mean token NLL of the
    # selected response under the current policy
    "learnability": ValueSpec(lambda q: _learnability(q)),  # p(1 - p), p = n_correct / n (LILO; balanced
    # online difficulty filtering): highest for questions solved half the time
    "band": ValueSpec(lambda q: _band(q), indicator=True),  # 1 when BAND[0] <= p <= BAND[1], else 0: train only
    # on mid-difficulty questions (balanced online difficulty filtering's filter, as a weight)
}


def value_spec(value: str) -> ValueSpec:
    """The row of VALUES for `value`; an unknown name is a WeightingError naming the choices."""
    if value not in VALUES:
        raise WeightingError(f"unknown uncertainty value {value!r}; choose one of {list(VALUES)}")
    return VALUES[value]


def entropy(cluster_ids: Sequence[int]) -> float:
    """h = -sum_k p_k log p_k of the empirical distribution of cluster ids (natural log). 0 for one cluster."""
    n = len(cluster_ids)
    if n == 0:
        raise WeightingError("entropy of zero answers is undefined")
    counts = np.bincount(np.asarray(cluster_ids, dtype=np.int64))
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def mapping_weights(values: Sequence[float], a: float) -> np.ndarray:
    """f(v_i; a) = v_i^a * N / sum_j v_j^a for strictly positive values; the weights average exactly 1.

    Computed in log space (a log v minus its log-sum-exp), so |a| = 3 on tiny or huge values neither
    overflows nor underflows. a = 0 returns all ones exactly.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise WeightingError("mapping_weights needs a non-empty 1-D array of values")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise WeightingError("mapping_weights needs finite values > 0 (dropped questions must be filtered out)")
    if a == 0:
        return np.ones_like(v)
    z = a * np.log(v)
    z -= z.max()
    w = np.exp(z)
    return w * (len(v) / w.sum())


def indicator_weights(values: np.ndarray, a: float, value: str) -> np.ndarray:
    """f(v; a) = v^a N / sum_j v_j^a for 0/1 values: 0^a = 0 for a > 0, so the N_in questions with v = 1 get
    N / N_in each and the others 0; a = 0 gives every question 1 (0^0 = 1: vanilla). a < 0 and a set with no
    question inside are WeightingErrors naming the value."""
    if a < 0:
        raise WeightingError(f"weighting.value={value} is a 0/1 indicator: 0^a is undefined for a < 0 (a={a:g}); "
                             "use a > 0 (or a = 0, vanilla)")
    if a == 0:
        return np.ones_like(values)
    inside = values > 0
    if not inside.any():
        raise WeightingError(f"weighting.value={value}: no kept question has value 1, nothing to train on")
    return np.where(inside, len(values) / inside.sum(), 0.0)


def grade_question(
    answers: Sequence[str | None],
    gold: str,
    cluster: Callable[[list], list[int]],
    equivalent: Callable[[str, str], bool],
) -> tuple[list[int], list[bool]]:
    """Cluster one question's extracted answers and grade each cluster once against the gold.

    Returns (cluster id per response, correct per response). A None answer is wrong. Members of a cluster share
    their correctness: with equivalence clustering they are equal answers; with exact clustering, equal strings.
    """
    ids = cluster(list(answers))
    verdict: dict[int, bool] = {}
    for cid, ans in zip(ids, answers):
        if cid not in verdict:
            verdict[cid] = ans is not None and equivalent(ans, gold)
    return ids, [verdict[c] for c in ids]


def question_stats(cluster_ids: Sequence[int], correct: Sequence[bool]) -> dict:
    """n, n_correct, n_clusters, entropy, accuracy, and rejected R = largest wrong cluster / n."""
    n = len(cluster_ids)
    wrong_sizes: dict[int, int] = {}
    for cid, ok in zip(cluster_ids, correct):
        if not ok:
            wrong_sizes[cid] = wrong_sizes.get(cid, 0) + 1
    n_correct = int(sum(bool(c) for c in correct))
    return {
        "n": n,
        "n_correct": n_correct,
        "n_clusters": len(set(cluster_ids)),
        "entropy": entropy(cluster_ids),
        "accuracy": n_correct / n,
        "rejected": max(wrong_sizes.values(), default=0) / n,
    }


def drop_reason(stats: dict) -> str:
    """Why a question is filtered out ('' when kept): 'all_wrong' or 'all_correct' (docs/method.md, step 5)."""
    if stats["n_correct"] == 0:
        return "all_wrong"
    if stats["n_correct"] == stats["n"]:
        return "all_correct"
    return ""


def uncertainty(questions: pd.DataFrame, value: str) -> np.ndarray:
    """The per-question value the mapping function raises to the power a (docs/method.md sections 2 and 4)."""
    return value_spec(value).of(questions)


def grade_rollouts(
    rollouts: pd.DataFrame,
    cluster_by: str = "equivalent",
    where: str = "rollouts",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grade and cluster every question's responses.

    Returns (graded rollouts with `answer, correct, cluster` columns, questions table of QUESTION_COLUMNS without
    `weight` and with `kept`, `drop_reason`). Rows with finish_reason "skipped" are excluded from the statistics.
    """
    from east_ds.grading import cluster_answers, extract_answer, is_equivalent

    required = ("question_id", "gold", "response")
    missing = [c for c in required if c not in rollouts.columns]
    if missing:
        raise WeightingError(f"{where}: missing column(s) {missing}; found {list(rollouts.columns)}")
    if len(rollouts) == 0:
        raise WeightingError(f"{where}: no rows")
    if cluster_by not in ("equivalent", "exact"):
        raise WeightingError(f"cluster_by must be 'equivalent' or 'exact', not {cluster_by!r}")

    df = rollouts.reset_index(drop=True)  # row labels are positions: per-row results go into arrays
    if "sample_index" not in df.columns:
        df["sample_index"] = df.groupby("question_id", sort=False).cumcount()
    df["response"] = df["response"].fillna("").astype(str)
    skipped = df["finish_reason"].eq("skipped") if "finish_reason" in df.columns else pd.Series(False, df.index)
    answers = [None if s else extract_answer(r) for r, s in zip(df["response"], skipped)]
    cluster_ids = np.full(len(df), -1, dtype=np.int64)
    correct = np.zeros(len(df), dtype=bool)

    def cluster(answers):
        return cluster_answers(answers, mode=cluster_by)

    rows = []
    for qid, group in df[~skipped].groupby("question_id", sort=False):
        golds = group["gold"].astype(str).unique()
        if len(golds) != 1:
            raise WeightingError(f"{where}: question {qid!r} has {len(golds)} different gold answers")
        if len(group) < 2:
            raise WeightingError(
                f"{where}: question {qid!r} has {len(group)} response; entropy needs n >= 2 samples per question"
            )
        rows_of_q = group.index.to_numpy()
        ids, ok = grade_question([answers[i] for i in rows_of_q], golds[0], cluster, is_equivalent)
        cluster_ids[rows_of_q] = ids
        correct[rows_of_q] = ok
        stats = question_stats(ids, ok)
        rows.append({"question_id": qid, **stats, "drop_reason": drop_reason(stats)})
    df["answer"], df["correct"], df["cluster"] = answers, correct, cluster_ids
    graded_ids = {r["question_id"] for r in rows}
    for qid in df.loc[skipped, "question_id"].unique():
        if qid not in graded_ids:  # every sample of the question was skipped (prompt too long)
            rows.append({"question_id": qid, "n": 0, "n_correct": 0, "n_clusters": 0, "entropy": math.nan,
                         "accuracy": math.nan, "rejected": math.nan, "drop_reason": "skipped"})
    questions = pd.DataFrame(rows)
    questions["kept"] = questions["drop_reason"].eq("")
    return df, questions


def attach_weights(questions: pd.DataFrame, a: float, value: str = "entropy",
                   cap_at_most_correct: int | None = None) -> pd.DataFrame:
    """Add `weight` = f(value; a) over the kept questions (global normalisation); NaN for dropped ones.

    `cap_at_most_correct` = k (a departure from the paper; None: off): a kept question with at most k correct
    samples gets min(f, 1), after the normalisation, so no other question's weight changes."""
    kept = questions["kept"].to_numpy(dtype=bool)
    if not kept.any():
        reasons = questions["drop_reason"].value_counts().to_dict()
        raise WeightingError(f"every question was dropped by the filters ({reasons}); nothing to train on")
    out = questions.copy()
    out["weight"] = np.nan
    values = uncertainty(out.loc[kept], value)
    out.loc[kept, "weight"] = (indicator_weights(values, a, value) if value_spec(value).indicator
                               else mapping_weights(values, a))
    if cap_at_most_correct is not None:
        low = kept & (out["n_correct"].to_numpy() <= cap_at_most_correct)
        out.loc[low, "weight"] = np.minimum(out.loc[low, "weight"], 1.0)
    return out
