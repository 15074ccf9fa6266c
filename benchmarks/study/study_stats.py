"""The study's statistics, pure numpy/pandas (no scipy): paired differences over seeds, an exact bootstrap of
their mean, the sign test, the minimal detectable difference of a paired test-set comparison, and the per-question
mechanism check (does the weight predict the next iteration's change in accuracy, against vanilla?).

Every function here has hand-worked values in tests/test_study_stats.py.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pandas as pd

EXACT_BOOTSTRAP_MAX = 7  # up to 7 values (7^7 = 823,543 resamples) the bootstrap enumerates every resample


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    With at most EXACT_BOOTSTRAP_MAX values every one of the n^n equally likely resamples is enumerated (no
    randomness); beyond that `n_boot` random resamples. The bounds are the lower (1 - level)/2 and upper
    (1 + level)/2 quantiles of the resampled means by the inverted CDF: the smallest mean whose cumulative
    probability reaches the level. NaN, NaN for no values.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    if n <= EXACT_BOOTSTRAP_MAX:
        idx = np.array(list(itertools.product(range(n), repeat=n)))
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = np.sort(x[idx].mean(axis=1))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom: bisection on its CDF, the density
    integrated by Simpson's rule (no scipy here). Accurate to about 1e-6 for df >= 1 and p <= 0.999."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 4000) -> float:
        t = np.linspace(0.0, x, steps + 1)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + (x / steps / 3) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean: mean -+ t_{(1+level)/2, n-1} * sd / sqrt(n). With 5 seeds the percentile
    bootstrap is known to be too narrow (it resamples only what was seen); this is the wider, classical check.
    NaN, NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    half = t_quantile((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def sign_test(values) -> float:
    """Two-sided exact sign test of median 0: zeros are dropped; p = P(|#positive - m/2| >= observed) under
    Binomial(m, 1/2). 1.0 when nothing is left. With 5 non-zero values the smallest p is 2/32 = 0.0625."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x) & (x != 0)]
    m = len(x)
    if m == 0:
        return 1.0
    k = int(min((x > 0).sum(), (x < 0).sum()))
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return float(min(1.0, 2 * tail))


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


def paired_differences(results: pd.DataFrame, reference: str = "vanilla") -> pd.DataFrame:
    """Per (arm, seed, iteration): arm accuracy minus the reference arm's accuracy on the same seed and iteration.

    `results` has arm, seed, iteration, accuracy (results.jsonl). Only seeds where both are recorded are paired.
    Columns: arm, seed, iteration, accuracy, reference, diff.
    """
    ref = results[results["arm"] == reference][["seed", "iteration", "accuracy"]]
    ref = ref.rename(columns={"accuracy": "reference"})
    other = results[results["arm"] != reference][["arm", "seed", "iteration", "accuracy"]]
    out = other.merge(ref, on=["seed", "iteration"], how="inner")
    out["diff"] = out["accuracy"] - out["reference"]
    return out.sort_values(["arm", "iteration", "seed"]).reset_index(drop=True)


def summarize(frame: pd.DataFrame, by: list[str], column: str, level: float = 0.95) -> pd.DataFrame:
    """Mean of `column` over seeds per group, with its bootstrap interval and sign-test p (of the column
    against 0), and the Student-t interval. Columns: *by, seeds, mean, lo, hi, t_lo, t_hi, positive (seeds above
    0), sign_p."""
    rows = []
    for key, g in frame.groupby(by, sort=True):
        v = g[column].to_numpy(dtype=float)
        lo, hi = bootstrap_ci(v, level)
        t_lo, t_hi = t_interval(v, level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "seeds": len(v), "mean": float(np.mean(v)), "lo": lo, "hi": hi,
                     "t_lo": t_lo, "t_hi": t_hi, "positive": int((v > 0).sum()), "sign_p": sign_test(v)})
    return pd.DataFrame(rows, columns=[*by, "seeds", "mean", "lo", "hi", "t_lo", "t_hi", "positive", "sign_p"])


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
