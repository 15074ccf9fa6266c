"""Example selection for SFT, DPO and KTO: which responses are chosen, deterministic under a seed."""

import pandas as pd
import pytest

from east_ds.weighting.selection import select_examples


def _graded():
    # q1: samples 0,1 correct (cluster 0); wrong clusters 1 (size 2: samples 2,3) and 2 (size 1: sample 4)
    # q2: sample 0 correct, samples 1,2 wrong in one cluster
    rows = []
    for i, (c, ok) in enumerate([(0, True), (0, True), (1, False), (1, False), (2, False)]):
        rows.append({"question_id": "q1", "sample_index": i, "prompt": "P1", "response": f"q1-r{i}",
                     "cluster": c, "correct": ok})
    for i, (c, ok) in enumerate([(0, True), (1, False), (1, False)]):
        rows.append({"question_id": "q2", "sample_index": i, "prompt": "P2", "response": f"q2-r{i}",
                     "cluster": c, "correct": ok})
    rows.append({"question_id": "q3", "sample_index": 0, "prompt": "P3", "response": "q3-r0", "cluster": 0,
                 "correct": True})
    graded = pd.DataFrame(rows)
    questions = pd.DataFrame({"question_id": ["q1", "q2", "q3"], "kept": [True, True, False],
                              "weight": [0.5, 1.5, float("nan")]})
    return graded, questions


def test_sft_one_correct_response_per_kept_question():
    graded, questions = _graded()
    ex = select_examples(graded, questions, "sft", seed=0)
    assert ex["question_id"].tolist() == ["q1", "q2"]  # q3 was dropped
    assert ex.loc[0, "response"] in ("q1-r0", "q1-r1")
    assert ex.loc[1, "response"] == "q2-r0"
    assert ex["weight"].tolist() == [0.5, 1.5]
    assert ex["prompt"].tolist() == ["P1", "P2"]


def test_sft_all_distinct_correct():
    graded, questions = _graded()
    graded.loc[1, "response"] = "q1-r0"  # a duplicate correct response counts once
    ex = select_examples(graded, questions, "sft", sft_examples="all")
    assert ex["response"].tolist() == ["q1-r0", "q2-r0"]
    graded, questions = _graded()
    ex = select_examples(graded, questions, "sft", sft_examples="all")
    assert ex["response"].tolist() == ["q1-r0", "q1-r1", "q2-r0"]
    assert ex["weight"].tolist() == [0.5, 0.5, 1.5]


def test_dpo_rejected_from_largest_wrong_cluster():
    graded, questions = _graded()
    for seed in range(20):
        ex = select_examples(graded, questions, "dpo", seed=seed)
        q1 = ex[ex["question_id"] == "q1"].iloc[0]
        assert q1["chosen"] in ("q1-r0", "q1-r1")
        assert q1["rejected"] in ("q1-r2", "q1-r3")  # cluster 1 (2 members), never the singleton cluster 2
        assert ex[ex["question_id"] == "q2"].iloc[0]["rejected"] in ("q2-r1", "q2-r2")


def test_kto_pairs_and_kl_responses():
    graded, questions = _graded()
    ex = select_examples(graded, questions, "kto", seed=3)
    dpo = select_examples(graded, questions, "dpo", seed=3)
    assert ex["label"].tolist() == [True, False, True, False]
    assert ex["weight"].tolist() == [0.5, 0.5, 1.5, 1.5]
    # the KTO examples are the DPO pair under the same seed
    assert ex["response"].tolist()[:2] == [dpo.loc[0, "chosen"], dpo.loc[0, "rejected"]]
    # every KL response comes from another question
    for qid, kl in zip(ex["question_id"], ex["kl_response"]):
        assert not kl.startswith(qid + "-")


def test_deterministic_and_order_independent():
    graded, questions = _graded()
    a = select_examples(graded, questions, "dpo", seed=7)
    shuffled = graded.sample(frac=1.0, random_state=1)
    b = select_examples(shuffled, questions, "dpo", seed=7)
    pd.testing.assert_frame_equal(a, b)
    # dropping another question does not change q1's choice
    c = select_examples(graded[graded["question_id"] == "q1"], questions, "dpo", seed=7)
    assert c.iloc[0].to_dict() == a.iloc[0].to_dict()
    # and the seed matters somewhere over many seeds
    chosen = {select_examples(graded, questions, "sft", seed=s).loc[0, "response"] for s in range(30)}
    assert chosen == {"q1-r0", "q1-r1"}


def test_unknown_loss():
    graded, questions = _graded()
    with pytest.raises(ValueError, match="unknown loss"):
        select_examples(graded, questions, "ppo")


@pytest.mark.parametrize("loss", ["sft", "dpo", "kto"])
def test_every_loss_gives_its_schema_columns_even_when_nothing_is_kept(loss):
    from east_ds.schema import LOSSES

    graded, questions = _graded()
    assert tuple(select_examples(graded, questions, loss).columns) == LOSSES[loss].example_columns
    none_kept = questions.assign(kept=False)
    empty = select_examples(graded, none_kept, loss)
    assert len(empty) == 0 and tuple(empty.columns) == LOSSES[loss].example_columns


def test_scored_responses_per_loss():
    """The perplexity baseline scores the SFT example, the DPO chosen response, the KTO desirable response."""
    from east_ds.weighting.selection import scored_responses

    graded, questions = _graded()
    dpo = select_examples(graded, questions, "dpo", seed=1)
    kto = select_examples(graded, questions, "kto", seed=1)
    sft = select_examples(graded, questions, "sft", seed=1)
    assert scored_responses(dpo, "dpo")["response"].tolist() == dpo["chosen"].tolist()
    assert scored_responses(kto, "kto")["response"].tolist() == dpo["chosen"].tolist()
    assert scored_responses(sft, "sft")["response"].tolist() == sft["response"].tolist()
    for loss, ex in (("sft", sft), ("dpo", dpo), ("kto", kto)):
        got = scored_responses(ex, loss)
        assert list(got.columns) == ["question_id", "prompt", "response", "weight"]
        assert got["question_id"].tolist() == ["q1", "q2"] and (got["weight"] == 1.0).all()
