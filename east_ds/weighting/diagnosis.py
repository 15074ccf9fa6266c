"""Where EAST's weight goes: the diagnosis of every iteration, from the weighting stage's own tables.

The paper's premise is that high entropy marks questions the model is unsure of but can learn. The study
(benchmarks/STUDY.md) found a task where it marks questions the model only guesses at: 92% of the top entropy
quarter had at most 2 of 16 samples correct, so a = 1 moved weight from easy questions to near-hopeless ones.
These figures say which regime a run is in, per iteration, without any extra rollout:

    bands      the share of the total weight and of the kept questions in each band of sampled accuracy
               (1-2, 3-5, 6-10, 11-15 correct of 16; scaled to n); vanilla's weight share is the question share
    rho_entropy_correct   Spearman rank correlation of entropy with the number of correct samples (kept questions)
    rho_weight_gain       Spearman correlation of the previous iteration's weights with this iteration's change
                          in sampled accuracy per question: does up-weighting a question make the model better at it?

Reads `questions.parquet` (schema.QUESTION_COLUMNS) of this and the previous iteration; writes nothing itself
(the driver writes `iter_<k>/diagnosis.parquet` and logs the figures). Pure pandas and numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

REFERENCE_N = 16
REFERENCE_EDGES = (2, 5, 10)  # the top of each band but the last, for n = 16
LOW_SHARE_WARNING = 0.5  # warn when more than this share of the weight is on the lowest band


def bands(n: int) -> list[tuple[int, int]]:
    """(lowest, highest) number of correct samples of each band for n samples: 1-2, 3-5, 6-10, 11-15 at n = 16,
    the edges scaled to n, every band non-empty. A kept question has 1 to n - 1 correct."""
    if n < 2:
        raise ValueError(f"accuracy bands need at least 2 samples per question, got n={n}")
    tops: list[int] = []
    for e in REFERENCE_EDGES:
        top = max(round(e * n / REFERENCE_N), (tops[-1] + 1) if tops else 1)
        if top < n - 1:
            tops.append(top)
    tops.append(n - 1)
    lows = [1] + [t + 1 for t in tops[:-1]]
    return list(zip(lows, tops))


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    x, y = pd.Series(x, dtype=float).reset_index(drop=True), pd.Series(y, dtype=float).reset_index(drop=True)
    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return math.nan
    rx, ry = x[ok].rank(), y[ok].rank()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def band_table(questions: pd.DataFrame) -> pd.DataFrame:
    """One row per band of the kept questions: band label, lo, hi, questions, question_share (= vanilla's
    weight share), weight_share, mean_weight."""
    kept = questions[questions["kept"].astype(bool)]
    n = int(questions["n"].max())
    total = float(kept["weight"].sum())
    rows = []
    for lo, hi in bands(n):
        b = kept[(kept["n_correct"] >= lo) & (kept["n_correct"] <= hi)]
        rows.append({"band": f"{lo}-{hi}/{n}" if lo != hi else f"{lo}/{n}", "lo": lo, "hi": hi,
                     "questions": len(b), "question_share": len(b) / len(kept) if len(kept) else math.nan,
                     "weight_share": float(b["weight"].sum()) / total if total > 0 else math.nan,
                     "mean_weight": float(b["weight"].mean()) if len(b) else math.nan})
    return pd.DataFrame(rows)


def diagnose(questions: pd.DataFrame, previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """(band table, figures) of one iteration; `previous` is the previous iteration's questions table, if any.

    Figures: low_band (its label), low_weight_share and low_question_share (the lowest band's share of the weight,
    and of the questions: what vanilla would put there), rho_entropy_correct, rho_weight_gain (NaN without a
    previous iteration), questions_paired (questions in both iterations)."""
    table = band_table(questions)
    kept = questions[questions["kept"].astype(bool)]
    low = table.iloc[0]
    out = {"low_band": str(low["band"]), "low_weight_share": float(low["weight_share"]),
           "low_question_share": float(low["question_share"]),
           "rho_entropy_correct": spearman(kept["entropy"], kept["n_correct"]), "rho_weight_gain": math.nan,
           "questions_paired": 0}
    if previous is not None:
        prev = previous[previous["kept"].astype(bool)].set_index("question_id")
        now = questions.set_index("question_id")["accuracy"]
        both = prev.index.intersection(now.index)
        out["questions_paired"] = int(len(both))
        out["rho_weight_gain"] = spearman(prev.loc[both, "weight"], now[both] - prev.loc[both, "accuracy"])
    return table, out


def summary_line(k: int, figures: dict) -> str:
    """The driver's one line after the weighting phase."""
    rho = figures["rho_weight_gain"]
    gain = "" if math.isnan(rho) else f"; weight vs next gain rho {rho:+.2f}"
    return (f"[east-ds] iteration {k}: weight on questions with {figures['low_band']} correct: "
            f"{figures['low_weight_share']:.0%} (vanilla would put {figures['low_question_share']:.0%}); "
            f"entropy vs correct rho {figures['rho_entropy_correct']:+.2f}{gain}")


def warning(figures: dict, a: float, value: str) -> str:
    """A warning a user can act on when most of the weight sits on questions the model almost never solves;
    '' otherwise."""
    share = figures["low_weight_share"]
    if not share > LOW_SHARE_WARNING:
        return ""
    return (f"[east-ds] WARNING: {share:.0%} of the weight is on questions with {figures['low_band']} correct "
            f"samples (vanilla would put {figures['low_question_share']:.0%} there): on this model and data "
            f"{value} marks questions the model guesses at rather than ones it can learn. Options the config "
            f"already has: a lower weighting.a (now {a:g}; 0 is vanilla), weighting.value=accuracy or "
            f"weighting.value=rejected (the paper's baselines), weighting.value=learnability (p(1-p): questions "
            f"solved about half the time), or weighting.cap_at_most_correct=K (a departure from the paper). "
            f"benchmarks/STUDY.md shows what each did on the study's task; `east-ds compare` tries them on yours.")
