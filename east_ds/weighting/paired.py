"""Paired comparisons over seeds, pure numpy/pandas (no scipy): each arm's accuracy minus a reference arm's on
the same seed and iteration, and the mean of those differences with its Student-t interval, an exact percentile
bootstrap and the sign test.

Used by `east-ds compare` (east_ds/compare.py) and by the study (benchmarks/study/study_stats.py re-exports these);
hand-worked values in tests/test_study_stats.py. Reads and writes nothing.
"""

from __future__ import annotations

import itertools
import math

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
