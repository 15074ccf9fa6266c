"""The study's statistics (benchmarks/study/study_stats.py) against values worked out by hand, and the mixed-difficulty
task (east_ds/data/synthetic.py) that the study runs on."""

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.study.study_stats import (bootstrap_ci, discordance, mde_paired, mechanism, paired_differences, sign_test,
                                    slope, summarize, t_interval, t_quantile)


def test_bootstrap_two_values():
    # resamples of [0, 1]: means 0, 0.5, 0.5, 1 (each 1/4); 2.5% -> 0, 97.5% -> 1; 50% level: 25% -> 0, 75% -> 0.5
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], level=0.5) == (0.0, 0.5)


def test_bootstrap_three_values():
    # [0, 0, 3]: the mean is the number j of draws of the 3, j ~ Binomial(3, 1/3): P = 8, 12, 6, 1 (/27).
    # CDF 0.296, 0.741, 0.963, 1: the 97.5% bound is 3; at level 0.9 the 95% bound is 2 (0.963 >= 0.95).
    assert bootstrap_ci([0.0, 0.0, 3.0]) == (0.0, 3.0)
    assert bootstrap_ci([0.0, 0.0, 3.0], level=0.9) == (0.0, 2.0)


def test_bootstrap_constant_nan_and_random_path():
    assert bootstrap_ci([0.02] * 5) == pytest.approx((0.02, 0.02))
    assert bootstrap_ci([1.0, float("nan"), 1.0]) == (1.0, 1.0)  # NaN values are left out
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    lo, hi = bootstrap_ci(np.arange(20.0))  # 20 values: random resamples; the mean 9.5 lies inside
    assert lo < 9.5 < hi and hi - lo < 10


def test_t_quantiles_and_interval():
    # df 1 is the Cauchy: quantile tan(pi (p - 1/2)); df 2 has the closed form t = (2p - 1) sqrt(2 / (1 - a^2))
    # with a = 2p - 1; large df tends to the normal 1.95996; df 4 is the table's 2.7764.
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-5)
    a = 0.95
    assert t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 10000) == pytest.approx(1.95996, abs=1e-3)
    # values 1, 2, 3: mean 2, sd 1, half width t_{.975,2} / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_sign_test():
    assert sign_test([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # 5 of 5 positive
    assert sign_test([1, 2, 3, 4, -5]) == pytest.approx(2 * 6 / 32)  # 4 of 5: 2 * (C(5,0) + C(5,1)) / 32
    assert sign_test([1, -1]) == 1.0
    assert sign_test([0, 0, 0]) == 1.0  # zeros are dropped
    assert sign_test([0, -1, -2, -3]) == pytest.approx(2 / 8)  # 3 of 3 negative after dropping the zero


def test_mde():
    # z = 1.95996 + 0.84162 = 2.80158; d = 0.2, n = 2000: SE = sqrt(1e-4) = 0.01 -> 0.0280; 5 seeds: / sqrt 5
    assert mde_paired(0.2, 2000) == pytest.approx(0.0280158, abs=1e-6)
    assert mde_paired(0.2, 2000, n_seeds=5) == pytest.approx(0.0280158 / math.sqrt(5), abs=1e-6)


def test_discordance_and_slope():
    a = pd.DataFrame({"question_id": ["q1", "q2", "q3", "q4"], "correct": [True, True, False, False]})
    b = pd.DataFrame({"question_id": ["q4", "q3", "q2", "q1"], "correct": [True, False, False, True]})
    assert discordance(a, b) == 0.5  # q2 and q4 differ; matched by id, not by row
    assert slope([0, 1, 2], [1, 3, 5]) == 2.0
    assert math.isnan(slope([1, 1], [0, 1]))


def test_paired_differences_and_summary():
    rows = [("vanilla", 0, 1, 0.30), ("east_a1", 0, 1, 0.32), ("vanilla", 1, 1, 0.40), ("east_a1", 1, 1, 0.39),
            ("east_a1", 2, 1, 0.50)]  # seed 2 has no vanilla row: not paired
    df = pd.DataFrame(rows, columns=["arm", "seed", "iteration", "accuracy"])
    d = paired_differences(df, "vanilla")
    assert d["seed"].tolist() == [0, 1]
    assert d["diff"].tolist() == pytest.approx([0.02, -0.01])
    s = summarize(d, ["arm", "iteration"], "diff").iloc[0]
    # mean 0.005; resamples of two values: -0.01, 0.005, 0.005, 0.02 -> interval (-0.01, 0.02); 1 of 2 positive
    assert (s["seeds"], s["positive"], s["sign_p"]) == (2, 1, 1.0)
    assert (s["mean"], s["lo"], s["hi"]) == pytest.approx((0.005, -0.01, 0.02))


def test_dpo_arms_pair_with_dpo_vanilla():
    """A DPO arm's difference is taken against dpo_vanilla (only its weights differ); dpo_vanilla itself, like
    every SFT arm, against vanilla (the loss)."""
    from benchmarks.study.study_report import diff_table, paired, reference_of

    assert [reference_of(a, "vanilla") for a in ("east_a1", "dpo_vanilla", "dpo_east_a1")] == [
        "vanilla", "vanilla", "dpo_vanilla"]
    acc = {"vanilla": (0.30, 0.40), "east_a1": (0.31, 0.42), "dpo_vanilla": (0.25, 0.35), "dpo_east_a1": (0.28, 0.34)}
    df = pd.DataFrame([(arm, seed, 1, a[seed]) for arm, a in acc.items() for seed in (0, 1)],
                      columns=["arm", "seed", "iteration", "accuracy"])
    d = paired(df, "vanilla", paired_differences)
    got = {arm: g.sort_values("seed")["diff"].tolist() for arm, g in d.groupby("arm")}
    assert got["east_a1"] == pytest.approx([0.01, 0.02])
    assert got["dpo_vanilla"] == pytest.approx([-0.05, -0.05])
    assert got["dpo_east_a1"] == pytest.approx([0.03, -0.01])  # not 0.28 - 0.30, 0.34 - 0.40
    t = diff_table(d).set_index("arm")
    assert t.loc["dpo_east_a1", "against"] == "dpo_vanilla" and t.loc["east_a1", "against"] == "vanilla"
    assert t.loc["dpo_east_a1", "difference (points) [95% CI]"] == "+1.0 [-1.0, +3.0]"



def test_added_arms_share_the_seeds_first_rollouts(tmp_path):
    """A later command with other --arms (the DPO arms) shares iteration 1's rollouts of an arm an earlier
    command ran on the same seed (study.shared_source, through east_ds.compare.run_paired), so it starts from
    the same samples; an arm that has its own keeps them; on a seed no arm has sampled, the first arm samples."""
    from benchmarks.study.study import StudyConfig, run_config, shared_source
    from east_ds.compare import run_paired

    cfg = StudyConfig(arms=("dpo_vanilla", "dpo_east_a1"), out=tmp_path)
    theirs = tmp_path / "seed_3" / "vanilla" / "iter_1" / "rollouts.parquet"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"vanilla's samples")
    own = tmp_path / "seed_3" / "dpo_east_a1" / "iter_1" / "rollouts.parquet"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"its own")
    assert shared_source(cfg, 3) == theirs.parent.parent
    ran = []
    run_paired([run_config(cfg, 3, arm) for arm in cfg.arms], lambda c, copied: ran.append((c.name, copied)),
               source=shared_source(cfg, 3))
    assert ran == [("dpo_vanilla", ["iter_1/rollouts.parquet"]), ("dpo_east_a1", [])]
    assert (tmp_path / "seed_3" / "dpo_vanilla" / "iter_1" / "rollouts.parquet").read_bytes() == b"vanilla's samples"
    assert own.read_bytes() == b"its own"
    assert shared_source(cfg, 4) is None  # no arm of seed 4 has rollouts yet: dpo_vanilla samples, then shares
    cfg_4 = [run_config(cfg, 4, arm) for arm in cfg.arms]
    run_paired(cfg_4, lambda c, copied: ran.append((c.name, copied)) or (
        c.name == "dpo_vanilla" and _write(c.run_dir / "iter_1" / "rollouts.parquet", b"seed 4")))
    assert ran[2:] == [("dpo_vanilla", []), ("dpo_east_a1", ["iter_1/rollouts.parquet"])]
    assert (cfg_4[1].run_dir / "iter_1" / "rollouts.parquet").read_bytes() == b"seed 4"


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_the_study_writes_compares_report_with_vanilla_as_reference(tmp_path):
    """study.compare_report: east-ds compare's report over the command's run directories, vanilla first (the
    reference) whatever the order of --arms; its paired differences are the arms' own accuracies' differences."""
    from benchmarks.study.study import StudyConfig, compare_report
    from east_ds.tables import write_table

    cfg = StudyConfig(arms=("learn_a1", "vanilla"), seeds=(0, 1, 2), iterations=1, out=tmp_path / "runs",
                      results=tmp_path / "results")
    right = {("vanilla", 0): 5, ("vanilla", 1): 6, ("vanilla", 2): 4, ("learn_a1", 0): 6, ("learn_a1", 1): 6,
             ("learn_a1", 2): 7}  # of 10 test questions at iteration 1; 3 at iteration 0 everywhere
    for (arm, seed), n in right.items():
        run = cfg.out / f"seed_{seed}" / arm
        for k, m in ((0, 3), (1, n)):
            table = pd.DataFrame({"question_id": [f"t{i}" for i in range(10)], "correct": [i < m for i in range(10)]})
            write_table(table, run / f"iter_{k}" / "eval.parquet")
        (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0}) + "\n")
    md = compare_report(cfg)
    figures = json.loads((md.parent / "compare.json").read_text())
    assert figures["reference"] == "vanilla" and figures["arms"] == ["vanilla", "learn_a1"]
    (row,) = figures["paired"]
    assert (row["arm"], row["iteration"], row["seeds"]) == ("learn_a1", 1, 3)
    assert row["mean"] == pytest.approx(100 * (0.1 + 0.0 + 0.3) / 3)  # +10, 0, +30 points
    assert row["positive"] == 2
    # learn_a1's iteration 0 tables here are byte-identical to vanilla's, so the report counts them as shared
    assert (figures["cost"]["evaluations_run"], figures["cost"]["evaluations_shared"]) == (9, 3)
    assert compare_report(StudyConfig(arms=("vanilla",), seeds=(9,), out=tmp_path / "none")) is None


def test_mechanism_table_skips_arms_with_equal_weights():
    """dpo_vanilla (every weight 1) has no slope against vanilla; the table lists only arms whose weights vary."""
    from benchmarks.study.study_report import mechanism_table

    mech = pd.DataFrame([("east_a1", "vanilla", 0, 4, 0.3, 0.2, -0.1, 1.0),
                         ("east_a1", "vanilla", 1, 4, 0.1, 0.1, 0.0, 0.5),
                         ("dpo_vanilla", "vanilla", 0, 4, math.nan, 0.0, 0.0, math.nan)],
                        columns=["arm", "against", "seed", "questions", "slope", "top_quartile", "bottom_quartile",
                                 "corr_own"])
    t = mechanism_table(mech)
    assert t["arm"].tolist() == ["east_a1"]
    assert t.iloc[0]["slope: excess change per unit weight (points) [95% CI]"] == "+20.0 [+10.0, +30.0]"
    assert t.iloc[0]["top - bottom weight quartile, excess change (points) [95% CI]"] == "+20.0 [+10.0, +30.0]"
    assert t.iloc[0]["corr(weight, own change)"] == 0.75


def test_mechanism_by_hand():
    # One seed. Iteration 1 (shared): q1..q4 kept, sampled accuracy 0.5 each. EAST weights 0.5, 0.5, 1.5, 1.5.
    # Iteration 2: vanilla 0.6 everywhere (change +0.1); EAST 0.5, 0.5, 0.8, 0.8 (change 0, 0, +0.3, +0.3).
    # Excess change = -0.1, -0.1, +0.2, +0.2: slope on weight = 0.3 / 1.0 = 0.3; top - bottom quartile = 0.3.
    rows = []
    for qid, w, east2 in (("q1", 0.5, 0.5), ("q2", 0.5, 0.5), ("q3", 1.5, 0.8), ("q4", 1.5, 0.8)):
        rows += [("vanilla", 0, 1, qid, True, 1.0, 0.5), ("east_a1", 0, 1, qid, True, w, 0.5),
                 ("vanilla", 0, 2, qid, True, 1.0, 0.6), ("east_a1", 0, 2, qid, True, 1.0, east2)]
    rows += [("vanilla", 0, 1, "q5", False, np.nan, 1.0), ("east_a1", 0, 1, "q5", False, np.nan, 1.0),
             ("vanilla", 0, 2, "q5", True, 1.0, 0.0), ("east_a1", 0, 2, "q5", True, 1.0, 0.9)]  # dropped at 1
    q = pd.DataFrame(rows, columns=["arm", "seed", "iteration", "question_id", "kept", "weight", "accuracy"])
    m = mechanism(q, "vanilla", 1)
    assert len(m) == 1
    r = m.iloc[0]
    assert (r["arm"], r["seed"], r["questions"]) == ("east_a1", 0, 4)
    assert r["slope"] == pytest.approx(0.3)
    assert r["top_quartile"] - r["bottom_quartile"] == pytest.approx(0.3)
    assert r["corr_own"] == pytest.approx(1.0)


def test_demo_problems_unchanged():
    """The mixed-difficulty task reuses the demo's generator; the demo's own problems stay byte for byte."""
    from east_ds.data.synthetic import make_problems, to_gsm8k_rows

    h = hashlib.sha256()
    for seed, prefix, n in ((1, "train", 800), (2, "test", 500), (3, "warm", 3000), (4, "probe", 32),
                            (1234, "tok", 400)):
        h.update(json.dumps(to_gsm8k_rows(make_problems(n, seed=seed, prefix=prefix))).encode())
    assert h.hexdigest() == "538f045b24b6a052a88e51bce362d61087a90caf9c3c05e0d81ab5f745e04d6f"


def test_mixed_problems():
    from east_ds.grading import grade
    from east_ds.data.synthetic import TIERS, make_mixed_problems, tier_of

    ps = make_mixed_problems(200, seed=7, prefix="t")
    assert [p.question_id for p in ps] == [p.question_id for p in make_mixed_problems(200, seed=7, prefix="t")]
    counts = pd.Series([tier_of(p.question_id) for p in ps]).value_counts()
    assert counts.to_dict() == {"easy": 40, "medium": 70, "hard": 60, "hopeless": 30}
    for p in ps:
        tier = next(t for t in TIERS if t.name == tier_of(p.question_id))
        lines = p.solution.split("\n")[:-2]
        assert tier.steps[0] <= len(lines) <= tier.steps[1]
        value = int(lines[0].split()[0])
        for line in lines:  # each step's arithmetic is right and chains on
            x, op, k, _, y = line.split()
            assert int(x) == value and y == str({"+": int(x) + int(k), "-": int(x) - int(k),
                                                 "*": int(x) * int(k)}[op])
            value = int(y)
        assert p.answer == str(value) and value >= 1 and grade(f"\\boxed{{{value}}}", p.answer)
    assert tier_of("train-hard-12") == "hard" and tier_of("train-12") == "" and tier_of("x-odd-1") == ""
