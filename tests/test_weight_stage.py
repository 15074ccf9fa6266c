"""`east-ds weight`: rollouts table -> questions.parquet and examples.parquet, with hand-derived entropies."""

import json
import math

import pandas as pd
import pytest

from east_ds.cli import main
from east_ds.config import WeightingConfig
from east_ds.weighting.stage import weigh
from east_ds.weighting.mapping import grade_rollouts


def _rollouts():
    # q1 (gold 1/2): answers 0.5, \frac{1}{2}, 1/2, 3 -> clusters {1/2 x3, 3 x1}; 3 correct
    #   h1 = -(3/4 log 3/4 + 1/4 log 1/4) = 0.562335...
    # q2 (gold 7): answers 7, 8, 9, none -> 4 singleton clusters; 1 correct; h2 = log 4 = 1.386294...
    # q3 (gold 5): all 5 -> all correct, dropped.   q4 (gold 2): all wrong, dropped.
    data = {
        "q1": ("1/2", ["so \\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "The answer is 1/2", "\\boxed{3}"]),
        "q2": ("7", ["\\boxed{7}", "\\boxed{8}", "\\boxed{9}", "I don't know"]),
        "q3": ("5", ["\\boxed{5}"] * 4),
        "q4": ("2", ["\\boxed{3}", "\\boxed{4}", "\\boxed{3}", "\\boxed{4}"]),
    }
    rows = []
    for qid, (gold, responses) in data.items():
        for i, r in enumerate(responses):
            rows.append({"question_id": qid, "sample_index": i, "question": f"Q {qid}", "gold": gold,
                         "prompt": f"P {qid}", "response": r})
    return pd.DataFrame(rows)


H1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
H2 = math.log(4)


def test_grade_rollouts_hand_values():
    graded, q = grade_rollouts(_rollouts())
    q = q.set_index("question_id")
    assert q.loc["q1", "n_clusters"] == 2 and q.loc["q1", "n_correct"] == 3
    assert q.loc["q1", "entropy"] == pytest.approx(H1)
    assert q.loc["q2", "entropy"] == pytest.approx(H2) and q.loc["q2", "n_correct"] == 1
    assert q.loc["q2", "rejected"] == 0.25
    assert q["drop_reason"].to_dict() == {"q1": "", "q2": "", "q3": "all_correct", "q4": "all_wrong"}
    # exact clustering keeps 0.5, \frac{1}{2} and 1/2 apart: 4 clusters, h = log 4
    _, qx = grade_rollouts(_rollouts(), cluster_by="exact")
    assert qx.set_index("question_id").loc["q1", "entropy"] == pytest.approx(math.log(4))


def test_weight_cli_writes_tables(tmp_path, capsys):
    src = tmp_path / "rollouts.jsonl"
    _rollouts().to_json(src, orient="records", lines=True)
    assert main(["weight", str(src), "--a", "1", "--loss", "dpo", "--out", str(tmp_path / "w")]) == 0
    q = pd.read_parquet(tmp_path / "w" / "questions.parquet").set_index("question_id")
    # a = 1 over the two kept questions: w_i = 2 h_i / (h1 + h2)
    assert q.loc["q1", "weight"] == pytest.approx(2 * H1 / (H1 + H2))
    assert q.loc["q2", "weight"] == pytest.approx(2 * H2 / (H1 + H2))
    assert q.loc[["q3", "q4"], "weight"].isna().all()
    for col in ("n", "n_correct", "n_clusters", "entropy", "accuracy", "rejected", "kept", "weight"):
        assert col in q.columns
    ex = pd.read_parquet(tmp_path / "w" / "examples.parquet")
    assert ex["question_id"].tolist() == ["q1", "q2"]
    assert ex.set_index("question_id").loc["q1", "rejected"] == "\\boxed{3}"
    assert ex.set_index("question_id").loc["q2", "chosen"] == "\\boxed{7}"
    assert "2/4 questions kept" in capsys.readouterr().out


def test_a_zero_weights_are_ones(tmp_path):
    m = weigh(_rollouts(), WeightingConfig(a=0.0), "sft", tmp_path)
    ex = pd.read_parquet(tmp_path / "examples.parquet")
    assert ex["weight"].tolist() == [1.0, 1.0] and m["kept"] == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["gold"]), "missing column"),
    (lambda df: df[df["question_id"] != "q1"].iloc[:-3], "has 1 response"),
    (lambda df: df[df["question_id"].isin(["q3", "q4"])], "every question was dropped"),
])
def test_weight_cli_errors(tmp_path, capsys, mutate, message):
    src = tmp_path / "r.jsonl"
    mutate(_rollouts()).to_json(src, orient="records", lines=True)
    assert main(["weight", str(src), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_weight_cli_empty_and_bad_json(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["weight", str(empty), "--out", str(tmp_path / "w")]) == 2
    assert "empty" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": "a"}) + "\n{oops\n")
    assert main(["weight", str(bad), "--out", str(tmp_path / "w")]) == 2
    assert "bad.jsonl: line 2" in capsys.readouterr().err


def test_perplexity_baseline_scores_the_selected_response(tmp_path):
    seen = {}

    def perplexity(table):
        seen["table"] = table
        return pd.Series({"q1": 0.5, "q2": 1.5})  # mean token NLL of each question's chosen response

    weigh(_rollouts(), WeightingConfig(a=1.0, value="perplexity"), "dpo", tmp_path, perplexity=perplexity)
    # the scored table is SFT-shaped and holds the DPO chosen responses
    assert list(seen["table"].columns) == ["question_id", "prompt", "response", "weight"]
    assert seen["table"].set_index("question_id").loc["q2", "response"] == "\\boxed{7}"
    q = pd.read_parquet(tmp_path / "questions.parquet").set_index("question_id")
    # a = 1: weights 2 * (0.5, 1.5) / 2 = 0.5, 1.5
    assert q.loc["q1", "weight"] == pytest.approx(0.5) and q.loc["q2", "weight"] == pytest.approx(1.5)
    ex = pd.read_parquet(tmp_path / "examples.parquet")
    assert ex["weight"].tolist() == pytest.approx([0.5, 1.5])


def test_perplexity_unscored_question_is_dropped(tmp_path):
    weigh(_rollouts(), WeightingConfig(a=1.0, value="perplexity"), "sft", tmp_path,
          perplexity=lambda table: pd.Series({"q2": 2.0}))  # q1's response could not be scored
    q = pd.read_parquet(tmp_path / "questions.parquet").set_index("question_id")
    assert q.loc["q1", "drop_reason"] == "unscored" and not q.loc["q1", "kept"]
    assert q.loc["q2", "weight"] == 1.0
    assert pd.read_parquet(tmp_path / "examples.parquet")["question_id"].tolist() == ["q2"]
    with pytest.raises(Exception, match="needs a model"):
        weigh(_rollouts(), WeightingConfig(value="perplexity"), "sft", tmp_path)
