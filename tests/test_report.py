"""`east-ds report` on synthetic run directories written directly (no models): PNGs, report.md numbers, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from east_ds import cli
from east_ds.report import accuracy_table, load_run, write_report
from east_ds.tables import write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _questions(k: int, a: float, n_q: int = 12) -> pd.DataFrame:
    """A questions table: 4 dropped (2 all-correct, 2 all-wrong), the rest kept with weights h^a N / sum h^a."""
    rows = []
    for i in range(n_q):
        n_correct = [8, 8, 0, 0][i] if i < 4 else 1 + (i + k) % 7
        n_clusters = 1 if i < 4 else 1 + (i % 4)
        h = 0.0 if i < 4 else math.log(n_clusters + 1) * (1 + 0.1 * k)
        reason = ["all_correct", "all_correct", "all_wrong", "all_wrong"][i] if i < 4 else ""
        rows.append(dict(question_id=f"q{i}", n=8, n_correct=n_correct, n_clusters=n_clusters, entropy=h,
                         accuracy=n_correct / 8, rejected=0.25, kept=i >= 4, drop_reason=reason,
                         weight=float("nan")))
    q = pd.DataFrame(rows)
    kept = q["kept"]
    ha = q.loc[kept, "entropy"] ** a
    q.loc[kept, "weight"] = ha * kept.sum() / ha.sum()
    return q


def make_run(root: Path, name: str, a: float, loss: str, accs: list[float], partial: bool = False) -> Path:
    """A run directory as the driver writes it; `partial` leaves the last iteration unfinished (no metrics)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"name: {name}\niterations: {len(accs) - 1}\nweighting:\n  a: {a}\ntraining:\n  loss: {loss}\n")
    lines = []
    for k, acc in enumerate(accs):
        d = run / f"iter_{k}"
        d.mkdir()
        if k == 0:
            rec = {"iteration": 0, "eval_accuracy": acc, "phase_seconds": {"evaluate": 5.0}}
        else:
            write_table(_questions(k, a), d / "questions.parquet")
            phases = {"rollout": 12.0, "weigh": 0.5, "reference": 0.0, "train": 30.0, "update_weights": 0.5,
                      "evaluate": 5.0}
            rec = {"iteration": k, "eval_accuracy": acc, "phase_seconds": phases,
                   "iteration_seconds": sum(phases.values()), "name": name, "a": a, "loss": loss}
        (d / "metrics.json").write_text(json.dumps(rec))
        lines.append(json.dumps(rec))
    if partial:  # iteration K+1 crashed after weighing: questions table, no metrics
        d = run / f"iter_{len(accs)}"
        d.mkdir()
        write_table(_questions(len(accs), a), d / "questions.parquet")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _is_png(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG_MAGIC


def test_two_runs_side_by_side(tmp_path):
    vanilla = make_run(tmp_path, "vanilla", 0.0, "sft", [0.30, 0.35, 0.38])
    east = make_run(tmp_path, "east", 1.0, "sft", [0.30, 0.37, 0.42], partial=True)

    table = accuracy_table([vanilla, east])
    assert list(table.columns) == ["vanilla", "east"]
    assert list(table.index) == [0, 1, 2]
    assert table.loc[2, "east"] == pytest.approx(0.42)
    assert table.loc[1, "vanilla"] == pytest.approx(0.35)

    md_path = write_report([vanilla, east], tmp_path / "out")
    out = md_path.parent
    for png in ["accuracy.png", "entropy_vanilla.png", "weights_vanilla.png", "phases_vanilla.png",
                "entropy_east.png", "weights_east.png", "phases_east.png"]:
        assert _is_png(out / png), png
    md = md_path.read_text()
    assert "| iteration | vanilla | east |" in md
    assert "| 0 | 0.300 | 0.300 |" in md
    assert "| 1 | 0.350 | 0.370 |" in md
    assert "| 2 | 0.380 | 0.420 |" in md
    assert "vanilla a=0 sft" in md and "east a=1 sft" in md  # legend / headings: name + a + loss
    # phase shares: per training iteration 48 s, of which train 30 s; plus 5 s for iteration 0
    assert "| train | 60.0 | 59.4% |" in md  # 2 x 30 s of (2 x 48 + 5) = 101 s
    assert "iteration 3: no metrics" in md  # the partial run's crashed iteration is noted


def test_one_run_cli_default_out(tmp_path, capsys):
    run = make_run(tmp_path, "east", 2.0, "dpo", [0.5, 0.6])
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report" / "report.md").is_file()
    assert _is_png(run / "report" / "accuracy.png")
    assert "0.600" in capsys.readouterr().out


def test_partial_run_without_metrics(tmp_path):
    run = make_run(tmp_path, "early", 1.0, "sft", [0.2])
    (run / "metrics.jsonl").unlink()  # only iter_0/metrics.json remains
    r = load_run(run)
    assert r.accuracy == {0: 0.2}
    md = write_report([run], tmp_path / "o").read_text()
    assert "| 0 | 0.200 |" in md


def test_missing_run_dir_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_directory_without_a_run_is_an_error_not_an_empty_report(tmp_path, capsys):
    """As a new user would try it: an empty directory, and one holding only unrelated files."""
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    for d in (empty, other):
        assert cli.main(["report", str(d)]) == 2
        err = capsys.readouterr().err
        assert str(d) in err and "holds no east_ds run" in err
        assert not (d / "report" / "report.md").exists()


def test_report_shows_where_the_weight_goes_and_compares_runs(tmp_path):
    """The band shares and correlations in report.md equal a recomputation from the questions tables; each run
    gets a weight-band plot and a paragraph; two runs share one comparison table."""
    from east_ds.weighting.diagnosis import diagnose

    a = make_run(tmp_path, "east", 1.0, "sft", [0.2, 0.3, 0.4])
    v = make_run(tmp_path, "vanilla", 0.0, "sft", [0.2, 0.25, 0.3])
    out = tmp_path / "report"
    md = write_report([a, v], out).read_text()
    assert "## Where the weight goes" in md
    for run, name, label in ((a, "east", "east a=1 sft"), (v, "vanilla", "vanilla a=0 sft")):
        assert _is_png(out / f"weight_bands_{name}.png")
        for k in (1, 2):
            q = pd.read_parquet(run / f"iter_{k}" / "questions.parquet")
            prev = pd.read_parquet(run / "iter_1" / "questions.parquet") if k == 2 else None
            _, f = diagnose(q, prev)
            row = f"| {label} | {k} | {f['low_band']} | {f['low_weight_share']:.0%} ({f['low_question_share']:.0%})"
            assert row in md, row
            assert f"{f['rho_entropy_correct']:+.2f}" in md
    # vanilla puts exactly the question share on each band
    assert "Weight did not move towards questions the model rarely solves." in md
