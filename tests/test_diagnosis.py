"""Where EAST's weight goes (weighting.diagnosis), on hand-made questions tables with values worked out here."""

import math

import numpy as np
import pandas as pd
import pytest

from east_ds.weighting.diagnosis import bands, diagnose, spearman, summary_line, warning


def test_bands_are_the_reference_at_16_and_scale_to_n():
    assert bands(16) == [(1, 2), (3, 5), (6, 10), (11, 15)]
    assert bands(32) == [(1, 4), (5, 10), (11, 20), (21, 31)]
    assert bands(4) == [(1, 1), (2, 2), (3, 3)]
    assert bands(2) == [(1, 1)]
    for n in range(2, 65):  # every kept count 1..n-1 in exactly one band, bands in order
        b = bands(n)
        assert [c for lo, hi in b for c in range(lo, hi + 1)] == list(range(1, n))
    with pytest.raises(ValueError, match="n=1"):
        bands(1)


def test_spearman_against_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1,2,3,4; y: 1,3,2,4 -> 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _q(n_correct, entropy, weight, n=16):
    kept = [0 < c < n for c in n_correct]
    return pd.DataFrame({"question_id": [f"q{i}" for i in range(len(n_correct))], "n": n, "n_correct": n_correct,
                         "accuracy": [c / n for c in n_correct], "entropy": entropy, "kept": kept,
                         "weight": [w if k else np.nan for w, k in zip(weight, kept)]})


def test_band_shares_and_correlations():
    # kept: 1, 2 (band 1-2), 4 (3-5), 12 (11-15); 16 is dropped. Weights 1.6, 1.2, 0.8, 0.4 (sum 4).
    q = _q([1, 2, 4, 12, 16], [2.0, 1.8, 1.0, 0.5, 0.0], [1.6, 1.2, 0.8, 0.4, 1.0])
    table, f = diagnose(q)
    assert table["band"].tolist() == ["1-2/16", "3-5/16", "6-10/16", "11-15/16"]
    assert table["questions"].tolist() == [2, 1, 0, 1]
    np.testing.assert_allclose(table["question_share"], [0.5, 0.25, 0, 0.25])
    np.testing.assert_allclose(table["weight_share"], [0.7, 0.2, 0, 0.1])
    assert f["low_weight_share"] == pytest.approx(0.7) and f["low_question_share"] == pytest.approx(0.5)
    assert f["rho_entropy_correct"] == pytest.approx(-1.0)  # entropy falls as correct samples rise
    assert math.isnan(f["rho_weight_gain"])
    assert summary_line(1, f) == ("[east-ds] iteration 1: weight on questions with 1-2/16 correct: 70% (vanilla "
                                  "would put 50%); entropy vs correct rho -1.00")
    assert "70% of the weight" in warning(f, 1.0, "entropy") and "weighting.a (now 1;" in warning(f, 1.0, "entropy")


def test_previous_weights_against_this_iterations_gain():
    prev = _q([1, 2, 4, 12], [2.0, 1.8, 1.0, 0.5], [1.6, 1.2, 0.8, 0.4])
    # gains in correct samples: +1, +6, +3, +2 -> ranks of gain 1,4,3,2 against weight ranks 4,3,2,1
    now = _q([2, 8, 7, 14], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    _, f = diagnose(now, prev)
    assert f["questions_paired"] == 4
    assert f["rho_weight_gain"] == pytest.approx(spearman([1.6, 1.2, 0.8, 0.4], [1, 6, 3, 2]))
    assert f["rho_weight_gain"] == pytest.approx(1 - 6 * (9 + 1 + 1 + 1) / 60)
    assert "weight vs next gain rho" in summary_line(2, f)


def test_no_warning_when_the_weight_follows_the_questions():
    q = _q([1, 5, 8, 12], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    _, f = diagnose(q)
    assert f["low_weight_share"] == pytest.approx(0.25) and warning(f, 0.0, "entropy") == ""


def test_driver_writes_the_table_prints_the_line_and_warns_once_per_run(tmp_path, capsys):
    """driver.diagnose_iteration on two iterations whose weight sits on near-hopeless questions: a table and a
    line each, and the warning only the first time."""
    from types import SimpleNamespace

    from east_ds.config import RunConfig
    from east_ds.driver import diagnose_iteration
    from east_ds.rundir import RunDir
    from east_ds.tables import read_table, write_table

    cfg = RunConfig(name="diag", output_dir=str(tmp_path))
    rd = RunDir(cfg)
    for k, correct in ((1, [1, 2, 4, 12]), (2, [2, 1, 6, 14])):
        write_table(_q(correct, [2.0, 1.8, 1.0, 0.5], [1.6, 1.2, 0.8, 0.4]), rd.iteration(k).path / "questions.parquet")
    session = SimpleNamespace(rundir=rd, cfg=cfg, warned=False)  # what diagnose_iteration reads of a Session
    for k in (1, 2):
        figures = diagnose_iteration(session, k)
        assert len(read_table(rd.iteration(k).diagnosis)) == 4
    assert session.warned
    out = capsys.readouterr().out
    assert out.count("iteration 1: weight on questions with 1-2/16 correct: 70%") == 1
    assert out.count("WARNING: 70% of the weight") == 1
    assert figures["rho_weight_gain"] is not None  # iteration 2 pairs with iteration 1
