"""The EAST core: entropy, the mapping function, filters and baselines, with hand-derived values."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from east_ds.weighting.mapping import (
    WeightingError,
    attach_weights,
    drop_reason,
    entropy,
    mapping_weights,
    question_stats,
)


def test_entropy_hand_values():
    # one cluster: p = 1, h = 0
    assert entropy([0, 0, 0, 0]) == 0.0
    # two equal clusters: h = -2 * 0.5 log 0.5 = log 2
    assert entropy([0, 1, 0, 1]) == pytest.approx(math.log(2))
    # 3 of 4 and 1 of 4: h = -(0.75 log 0.75 + 0.25 log 0.25) = 0.5623351446...
    assert entropy([0, 0, 0, 1]) == pytest.approx(0.5623351446188083)
    # n distinct answers: h = log n
    assert entropy(list(range(16))) == pytest.approx(math.log(16))


def test_mapping_hand_values():
    h = [math.log(2), 2 * math.log(2)]  # h2 = 2 h1
    # a = 1: weights proportional to h, mean 1 -> 2/3, 4/3
    np.testing.assert_allclose(mapping_weights(h, 1.0), [2 / 3, 4 / 3])
    # a = 2: proportional to 1, 4 -> 2 * (1/5, 4/5) = 0.4, 1.6
    np.testing.assert_allclose(mapping_weights(h, 2.0), [0.4, 1.6])
    # a = -1: proportional to 1, 1/2 -> 2 * (2/3, 1/3) = 4/3, 2/3 (confident question up-weighted)
    np.testing.assert_allclose(mapping_weights(h, -1.0), [4 / 3, 2 / 3])
    # a = 0: exactly ones
    assert mapping_weights(h, 0.0).tolist() == [1.0, 1.0]


def test_mapping_scale_invariant_and_stable():
    h = np.array([0.1, 0.5, 1.3, 2.7])
    for a in (-3.0, -0.5, 1.0, 3.0):
        # log base / dividing by log n cancels out
        np.testing.assert_allclose(mapping_weights(h, a), mapping_weights(h / math.log(16), a))
    # extreme values stay finite
    w = mapping_weights([1e-300, 1e300], 3.0)
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(2.0)


def test_mapping_rejects_zero_and_nan():
    with pytest.raises(WeightingError):
        mapping_weights([0.0, 1.0], 1.0)
    with pytest.raises(WeightingError):
        mapping_weights([float("nan"), 1.0], 1.0)
    with pytest.raises(WeightingError):
        mapping_weights([], 1.0)


positive = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False)
exponents = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(positive, min_size=1, max_size=50), exponents)
def test_weights_average_one(values, a):
    w = mapping_weights(values, a)
    assert np.all(w >= 0)
    assert w.mean() == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(positive, min_size=1, max_size=50), exponents, st.randoms(use_true_random=False))
def test_order_does_not_matter(values, a, rnd):
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    w = mapping_weights(values, a)
    wp = mapping_weights([values[i] for i in perm], a)
    np.testing.assert_allclose(wp, w[perm], rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(positive, min_size=2, max_size=50), st.floats(min_value=0.05, max_value=3.0))
def test_positive_a_is_monotone_in_entropy(values, a):
    v = np.asarray(values)
    w = mapping_weights(v, a)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(w[order]) >= -1e-12)
    # and a < 0 reverses it
    wn = mapping_weights(v, -a)
    assert np.all(np.diff(wn[order]) <= 1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(positive, min_size=1, max_size=50))
def test_a_zero_is_all_ones(values):
    assert mapping_weights(values, 0.0).tolist() == [1.0] * len(values)


def test_question_stats_and_filters():
    # 4 responses: clusters 0,0,1,2; cluster 0 correct; clusters 1 and 2 wrong with one member each
    s = question_stats([0, 0, 1, 2], [True, True, False, False])
    assert s["n"] == 4 and s["n_correct"] == 2 and s["n_clusters"] == 3
    assert s["accuracy"] == 0.5
    assert s["rejected"] == 0.25  # largest wrong cluster has 1 of 4
    # h = -(0.5 log 0.5 + 2 * 0.25 log 0.25) = 1.5 log 2
    assert s["entropy"] == pytest.approx(1.5 * math.log(2))
    assert drop_reason(s) == ""
    assert drop_reason(question_stats([0, 0], [True, True])) == "all_correct"
    assert drop_reason(question_stats([0, 1], [False, False])) == "all_wrong"


def _questions(entropies, kept):
    return pd.DataFrame({
        "question_id": [f"q{i}" for i in range(len(entropies))],
        "entropy": entropies,
        "accuracy": [0.5] * len(entropies),
        "rejected": [0.25] * len(entropies),
        "kept": kept,
        "drop_reason": ["" if k else "all_correct" for k in kept],
    })


def test_attach_weights_normalises_over_kept_only():
    q = attach_weights(_questions([1.0, 3.0, 0.0], [True, True, False]), a=1.0)
    # kept: h = 1, 3 -> weights 2 * (1/4, 3/4) = 0.5, 1.5; dropped: NaN
    assert q["weight"].iloc[0] == pytest.approx(0.5)
    assert q["weight"].iloc[1] == pytest.approx(1.5)
    assert math.isnan(q["weight"].iloc[2])


def test_attach_weights_baselines():
    q = _questions([1.0, 1.0], [True, True])
    q["accuracy"] = [0.75, 0.5]  # 1 - A = 0.25, 0.5 -> a=1: 2/3, 4/3
    np.testing.assert_allclose(attach_weights(q, 1.0, "accuracy")["weight"], [2 / 3, 4 / 3])
    q["rejected"] = [0.5, 0.125]  # -> 2 * (0.8, 0.2)
    np.testing.assert_allclose(attach_weights(q, 1.0, "rejected")["weight"], [1.6, 0.4])
    with pytest.raises(WeightingError, match="perplexity"):
        attach_weights(q, 1.0, "perplexity")
    q["perplexity"] = [2.0, 0.5]  # mean token NLL -> 2 * (0.8, 0.2)
    np.testing.assert_allclose(attach_weights(q, 1.0, "perplexity")["weight"], [1.6, 0.4])
    with pytest.raises(WeightingError, match=r"unknown uncertainty value 'variance'; choose one of \['entropy'"):
        attach_weights(q, 1.0, "variance")


def test_cap_keeps_near_hopeless_questions_at_or_below_one():
    """cap_at_most_correct=2: h = 1, 3, 2, 2 -> f = 0.5, 1.5, 1, 1 (mean 1); the question with 1 correct sample
    and f = 1.5 is capped to 1, the one with 5 correct keeps 1.5 wherever its entropy puts it; dropped stay NaN."""
    q = _questions([1.0, 3.0, 2.0, 2.0, 0.0], [True, True, True, True, False])
    q["n_correct"] = [0, 1, 5, 2, 16]
    q.loc[1, "entropy"], q.loc[2, "entropy"] = 3.0, 3.0  # two questions at f = 1.5: one near-hopeless, one not
    plain = attach_weights(q, 1.0)
    capped = attach_weights(q, 1.0, cap_at_most_correct=2)
    np.testing.assert_allclose(plain["weight"][:4], [4 * 1 / 9, 4 * 3 / 9, 4 * 3 / 9, 4 * 2 / 9])
    np.testing.assert_allclose(capped["weight"][:4], [4 / 9, 1.0, 4 / 3, 8 / 9])
    assert math.isnan(capped["weight"].iloc[4])
    assert capped["weight"][:4].mean() < 1  # the others keep EAST's weights: nothing is renormalised
    np.testing.assert_array_equal(attach_weights(q, 1.0, cap_at_most_correct=None)["weight"], plain["weight"])


def test_everything_dropped_is_an_error():
    with pytest.raises(WeightingError, match="every question was dropped"):
        attach_weights(_questions([0.0, 0.0], [False, False]), a=1.0)


def test_learnability_hand_values():
    """p(1 - p), p = n_correct / n. n = 16 with 8, 4 and 1 correct: p(1-p) = 1/4, 3/16, 15/256. Their sum is
    64/256 + 48/256 + 15/256 = 127/256, so a = 1 gives 3 * (64, 48, 15) / 127; a = -1 (the easier-looking
    extremes up-weighted): 1/v = 4, 16/3, 256/15, sum 1588/60 -> 3 * (240, 320, 1024) / 1584."""
    q = _questions([1.0, 1.0, 1.0], [True, True, True])
    q["n"], q["n_correct"] = 16, [8, 4, 1]
    np.testing.assert_allclose(attach_weights(q, 1.0, "learnability")["weight"],
                               [3 * 64 / 127, 3 * 48 / 127, 3 * 15 / 127])
    np.testing.assert_allclose(attach_weights(q, -1.0, "learnability")["weight"],
                               [3 * 240 / 1584, 3 * 320 / 1584, 3 * 1024 / 1584])
    assert attach_weights(q, 0.0, "learnability")["weight"].tolist() == [1.0, 1.0, 1.0]
    # one right answer among 16 with 15 distinct wrong ones: the highest entropy (log 16), learnability 15/256
    q1 = _questions([math.log(16)], [True])
    q1["n"], q1["n_correct"] = 16, 1
    assert attach_weights(q1, 1.0, "learnability")["weight"].tolist() == [1.0]


def test_band_hand_values():
    """The band indicator: 1 when 0.25 <= p <= 0.75 (4 to 12 of 16 correct, both ends in), else 0. Kept questions
    with 1, 4, 8, 12, 13 correct: 3 inside, so f = 5/3 for those and 0 for the others, for any a > 0; a = 0 is
    vanilla; a < 0 (0^a) and a set with nobody inside are refused, naming the value."""
    q = _questions([1.0] * 5 + [0.0], [True] * 5 + [False])
    q["n"], q["n_correct"] = 16, [1, 4, 8, 12, 13, 16]
    for a in (1.0, 2.5):
        w = attach_weights(q, a, "band")["weight"]
        np.testing.assert_allclose(w[:5], [0.0, 5 / 3, 5 / 3, 5 / 3, 0.0])
        assert math.isnan(w.iloc[5]) and w[:5].sum() == pytest.approx(5.0)
    assert attach_weights(q, 0.0, "band")["weight"][:5].tolist() == [1.0] * 5
    with pytest.raises(WeightingError, match=r"weighting.value=band is a 0/1 indicator.*a=-1"):
        attach_weights(q, -1.0, "band")
    q["n_correct"] = [1, 2, 3, 14, 15, 16]
    with pytest.raises(WeightingError, match="band: no kept question"):
        attach_weights(q, 1.0, "band")
