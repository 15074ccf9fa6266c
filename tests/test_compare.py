"""`east-ds compare` (east_ds/compare.py) on the driver's stand-ins (tests/driver_fakes.py): the arms of a seed
share one iteration 1 rollout and one iteration 0 evaluation, the report's figures are recomputed here from the
runs' own tables, a compare SIGKILLed mid-way resumes without redoing finished arms, and arms that would break
the pairing are refused, named. The stand-ins leave the loop, the copies and the report real; the real
components run the same driver in test_driver.py, and the demo compare in README.md's "A cheap first look"."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import signal
from pathlib import Path

import numpy as np
import pytest

import driver_fakes as fakes
from east_ds import compare, driver
from east_ds.metrics import Phases
from east_ds.tables import read_jsonl, read_table
from east_ds.weighting.paired import t_quantile
from test_driver_logic import backends, config

ARMS = ["vanilla=weighting.a=0", "east=weighting.a=1", "learn=weighting.value=learnability,weighting.a=1"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    model, golds = fakes.tiny_task(root, train_seed=21, test_seed=22)
    config(root, model, "base", mode="split")  # writes root/base.yaml
    return root, golds


@pytest.fixture(autouse=True)
def no_preflight(monkeypatch):
    """Many runs of one configuration: the preflight checks (test_preflight.py) are not what is tested here."""
    from east_ds.checks import preflight

    monkeypatch.setattr(preflight, "check_before_run", lambda cfg: None)


def configs(root: Path, out: str, arms=ARMS, seeds=SEEDS, iterations=2):
    return compare.arm_configs(root / "base.yaml", [f"output_dir={root / out}"],
                               [compare.parse_arm(a) for a in arms], seeds, iterations)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(setup):
    """One uninterrupted compare: 3 arms x 2 seeds x 2 iterations."""
    root, golds = setup
    mp = pytest.MonkeyPatch()
    from east_ds.checks import preflight
    mp.setattr(preflight, "check_before_run", lambda cfg: None)
    base, runs = configs(root, "whole")
    figures = compare.run_compare(base, runs, backends=backends(golds))
    mp.undo()
    return base, runs, figures


def test_the_arms_of_a_seed_share_one_rollout_and_one_baseline(finished):
    base, runs, _ = finished
    for seed in SEEDS:
        first = runs["vanilla", seed].run_dir
        for arm in ("east", "learn"):
            mine = runs[arm, seed].run_dir
            assert sha(mine / "iter_1" / "rollouts.parquet") == sha(first / "iter_1" / "rollouts.parquet")
            assert sha(mine / "iter_0" / "eval.parquet") == sha(first / "iter_0" / "eval.parquet")
            log = read_jsonl(mine / "metrics.jsonl")
            assert "rollout" in log[1]["skipped_phases"] and "evaluate" in log[0]["skipped_phases"]
            assert log[1]["rollout"] == read_jsonl(first / "metrics.jsonl")[1]["rollout"]  # kept metrics copied
            # only the weights differ at iteration 1: same kept questions, other weights
            q0, q1 = (read_table(d / "iter_1" / "questions.parquet").set_index("question_id") for d in (first, mine))
            assert q0["kept"].equals(q1["kept"]) and not np.allclose(q0["weight"].dropna(), q1["weight"].dropna())
        assert runs["learn", seed].weighting.value == "learnability"
        assert {runs[a, seed].rollout.seed for a in ("vanilla", "east", "learn")} == {seed}
        assert runs["east", seed].training.seed == runs["east", seed].weighting.seed == seed
    learn = read_table(runs["learn", 0].run_dir / "iter_1" / "questions.parquet")
    kept = learn[learn["kept"]]
    v = kept["n_correct"] / kept["n"] * (1 - kept["n_correct"] / kept["n"])
    np.testing.assert_allclose(kept["weight"], v * len(v) / v.sum())


def test_the_report_is_recomputed_from_the_runs_own_tables(finished):
    base, runs, figures = finished
    acc = {(a, s, k): read_table(c.run_dir / f"iter_{k}" / "eval.parquet")["correct"].astype(bool).mean()
           for (a, s), c in runs.items() for k in range(3)}
    got = {(r["arm"], r["seed"], r["iteration"]): r["accuracy"] for r in figures["accuracy"]}
    assert got == pytest.approx(acc)
    t = t_quantile(0.975, len(SEEDS) - 1)
    for r in figures["paired"]:
        d = np.array([100 * (acc[r["arm"], s, r["iteration"]] - acc["vanilla", s, r["iteration"]]) for s in SEEDS])
        half = t * d.std(ddof=1) / math.sqrt(len(d))
        assert (r["mean"], r["seeds"]) == (pytest.approx(d.mean()), 2)
        if half > 0:
            assert (r["t_lo"], r["t_hi"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert {(r["arm"], r["iteration"]) for r in figures["paired"]} == {(a, k) for a in ("east", "learn")
                                                                         for k in (1, 2)}
    for r in figures["bands"]:
        diag = read_table(runs[r["arm"], r["seed"]].run_dir / f"iter_{r['iteration']}" / "diagnosis.parquet")
        row = diag[diag["band"] == r["band"]].iloc[0]
        assert (r["weight_share"], r["question_share"]) == (pytest.approx(row["weight_share"]),
                                                            pytest.approx(row["question_share"]))
    # 6 runs of 2 iterations: 12 rollouts, of which the 4 non-first arms' iteration 1 are copies; 18 evaluations,
    # 4 of them (iteration 0) copies; every run trains twice
    cost = figures["cost"]
    assert (cost["rollouts_run"], cost["rollouts_shared"], cost["trainings"]) == (8, 4, 12)
    assert (cost["evaluations_run"], cost["evaluations_shared"]) == (14, 4)
    assert cost["one_run"] == {"rollouts": 2, "trainings": 2, "evaluations": 3}
    text = (compare.compare_dir(base) / "compare.md").read_text()
    assert text == figures["markdown"] and "Caveat: 2 seed(s)" in text and "## Where the weight went" in text
    table = read_table(compare.compare_dir(base) / "accuracy.parquet")
    assert len(table) == 3 * 2 * 3


def _killed_compare(root: Path, golds) -> None:
    """In the child: the compare, SIGKILLed right after the `east` arm of seed 0 has trained in iteration 1."""
    run = Phases.run

    def patched(self, name, done, fn):
        out = run(self, name, done, fn)
        if name == "train" and "east_s0" in str(self.store(name)):
            fakes.os.kill(fakes.os.getpid(), signal.SIGKILL)
        return out
    Phases.run = patched
    base, runs = configs(root, "killed")
    compare.run_compare(base, runs, backends=backends(golds))


def test_a_killed_compare_resumes_without_redoing_finished_arms(setup, finished):
    root, golds = setup
    child = multiprocessing.get_context("fork").Process(target=_killed_compare, args=(root, golds))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    base, runs = configs(root, "killed")
    assert (runs["vanilla", 0].run_dir / "iter_2" / "metrics.json").is_file()
    assert not (runs["east", 0].run_dir / "iter_1" / "metrics.json").is_file()
    fakes.CALLS.clear()
    figures = compare.run_compare(base, runs, backends=backends(golds))
    fits = [detail for what, detail in fakes.CALLS if what == "fit"]
    assert not any("vanilla_s0" in f for f in fits)  # the finished arm: nothing redone
    assert not any("east_s0/iter_1" in f for f in fits)  # the killed arm keeps its finished training
    _, whole, done = finished
    for key, cfg in runs.items():
        assert fakes.table_digests(cfg.run_dir) == fakes.table_digests(whole[key].run_dir), key
    strip = ("seconds",)
    assert {k: v for k, v in figures["cost"].items() if not any(s in k for s in strip)} == \
        {k: v for k, v in done["cost"].items() if not any(s in k for s in strip)}
    assert figures["paired"] == done["paired"]


@pytest.mark.parametrize("arms, seeds, named", [
    (["v=weighting.a=0", "e=weighting.nonsense=1"], SEEDS, "unknown config key 'weighting.nonsense'"),
    (["v=weighting.a=0", "e=weighting.value=variance"], SEEDS, "'variance' is not one of"),
    (["v=weighting.a=0", "e=rollout.n=8,weighting.a=1"], SEEDS, r"arm 'e' changes \['rollout.n'\]"),
    (["v=weighting.a=0", "e=model.path=elsewhere"], SEEDS, r"arm 'e' changes \['model.path'\]"),
    (["v=weighting.a=0", "e=training.seed=3"], SEEDS, r"arm 'e' sets \['training.seed'\], which --seeds sets"),
    (["v=weighting.a=0"], SEEDS, "at least two arms"),
    (["v=weighting.a=0", "v=weighting.a=1"], SEEDS, "arm names must differ"),
    (["v=weighting.a", "e=weighting.a=1"], SEEDS, r"\['weighting.a'\] is not of the form key=value"),
])
def test_arms_that_break_the_pairing_are_refused_by_name(setup, arms, seeds, named):
    root, _ = setup
    with pytest.raises(compare.CompareError, match=named):
        configs(root, "refused", arms=arms, seeds=seeds)
    assert not (root / "refused").exists()


def test_the_command_refuses_with_a_message_and_status_2(setup, capsys):
    from east_ds.cli import main

    root, _ = setup
    rc = main(["compare", str(root / "base.yaml"), f"output_dir={root / 'cli'}", "--arms", "v=weighting.a=0",
               "e=rollout.temperature=0.5", "--seeds", "0,x"])
    assert rc == 2 and "--seeds '0,x': expected integers" in capsys.readouterr().err
    rc = main(["compare", str(root / "base.yaml"), "--arms", "v=weighting.a=0", "e=rollout.temperature=0.5"])
    assert rc == 2 and "arm 'e' changes ['rollout.temperature']" in capsys.readouterr().err
