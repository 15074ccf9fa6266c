"""The study's statistics, pure numpy/pandas (no scipy): paired differences over seeds, an exact bootstrap of
their mean, the sign test, the minimal detectable difference of a paired test-set comparison, and the per-question
mechanism check (does the weight predict the next iteration's change in accuracy, against vanilla?).

Every function here has hand-worked values in tests/test_study_stats.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

# the pure paired statistics live in the package (east-ds compare uses them); re-exported for the study
from east_ds.weighting.paired import (EXACT_BOOTSTRAP_MAX, bootstrap_ci, paired_differences, sign_test,  # noqa: F401
                                      summarize, t_interval, t_quantile)


def mde_paired(discordance: float, n_questions: int, n_seeds: int = 1, alpha: float = 0.05,
               power: float = 0.8) -> float:
    """Minimal detectable difference in accuracy between two models scored on the same `n_questions`.

    The paired difference of accuracies has variance (d - delta^2) / n per seed, d the fraction of questions on
    which the two models disagree (one right, the other wrong): about d / n near delta = 0. Averaged over
    `n_seeds` independent seeds it shrinks by n_seeds. MDE = (z_{1-alpha/2} + z_power) * sqrt(d / (n * seeds)),
    the normal approximation (McNemar). Test-set sampling only: it leaves out seed-to-seed training noise.
    """
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(discordance / (n_questions * n_seeds))


def discordance(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Fraction of shared test questions on which exactly one of two evaluations is correct.
    Each frame has question_id, correct."""
    m = a[["question_id", "correct"]].merge(b[["question_id", "correct"]], on="question_id")
    if m.empty:
        return math.nan
    return float((m["correct_x"].astype(bool) != m["correct_y"].astype(bool)).mean())


def slope(x, y) -> float:
    """Least-squares slope of y on x; NaN when x is constant or there are fewer than 2 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return math.nan
    dx = x - x.mean()
    ss = float((dx ** 2).sum())
    return float((dx * (y - y.mean())).sum() / ss) if ss > 0 else math.nan


def mechanism(questions: pd.DataFrame, reference: str = "vanilla", iteration: int = 1) -> pd.DataFrame:
    """Does the weight an arm gave a question at `iteration` predict how that question's sampled accuracy
    changed by the next iteration, beyond what happened to it under the reference arm?

    `questions` has arm, seed, iteration, question_id, kept, weight, accuracy (sampled accuracy of that
    iteration's rollouts). For each (arm, seed): questions kept at `iteration` by both the arm and the reference;
    change = accuracy at iteration + 1 minus accuracy at iteration, per arm; excess = arm's change minus the
    reference's change. Iteration 1's rollouts are shared by every arm of a seed, so there the starting accuracy
    and the kept set are the same and the arms differ only in the weights.

    Returns per (arm, seed): questions, slope of excess on weight (points of accuracy per unit of weight),
    mean excess of the top and bottom weight quartiles, correlation of weight and the arm's own change.
    """
    q = questions[questions["iteration"].isin([iteration, iteration + 1])]
    wide = q.pivot_table(index=["arm", "seed", "question_id"], columns="iteration", values="accuracy")
    if iteration + 1 not in wide.columns or iteration not in wide.columns:
        return pd.DataFrame(columns=["arm", "seed", "questions", "slope", "top_quartile", "bottom_quartile",
                                     "corr_own"])
    change = (wide[iteration + 1] - wide[iteration]).rename("change").reset_index()
    now = q[q["iteration"] == iteration][["arm", "seed", "question_id", "kept", "weight"]]
    change = change.merge(now, on=["arm", "seed", "question_id"])
    ref = change[(change["arm"] == reference) & change["kept"]][["seed", "question_id", "change"]]
    rows = []
    for (arm, seed), g in change[(change["arm"] != reference) & change["kept"]].groupby(["arm", "seed"]):
        m = g.merge(ref[ref["seed"] == seed], on=["seed", "question_id"], suffixes=("", "_ref"))
        if m.empty:
            continue
        excess = (m["change"] - m["change_ref"]).to_numpy()
        w = m["weight"].to_numpy(dtype=float)
        lo_cut, hi_cut = np.quantile(w, [0.25, 0.75])
        own = np.corrcoef(w, m["change"])[0, 1] if w.std() > 0 and m["change"].std() > 0 else math.nan
        rows.append({"arm": arm, "seed": int(seed), "questions": len(m), "slope": slope(w, excess),
                     "top_quartile": float(excess[w >= hi_cut].mean()),
                     "bottom_quartile": float(excess[w <= lo_cut].mean()), "corr_own": float(own)})
    return pd.DataFrame(rows, columns=["arm", "seed", "questions", "slope", "top_quartile", "bottom_quartile",
                                       "corr_own"])
