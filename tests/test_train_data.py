"""Training data prep: tokenisation, truncation and drops, bad input, batch plans, padding. No DeepSpeed."""

import numpy as np
import pandas as pd
import pytest

from east_ds.training import batches as td
from east_ds.tables import TableError


class CharTok:
    """One token per character; EOS = 1, PAD = 0. Enough to check the token bookkeeping by hand."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def sft_df(n=8, weight=1.0):
    return pd.DataFrame({"question_id": [str(i) for i in range(n)], "prompt": ["P" * (2 + i % 3) for i in range(n)],
                         "response": ["r" * (1 + i) for i in range(n)], "weight": [weight] * n})


def test_encode_appends_eos_and_marks_prompt():
    ids, n_p, st = td.encode(CharTok(), "ab", "xyz", max_len=10)
    assert ids == [97, 98, 120, 121, 122, 1] and n_p == 2 and st == "ok"
    ids, n_p, st = td.encode(CharTok(), "ab", "xyz", max_len=4)  # cut from the right: EOS lost
    assert ids == [97, 98, 120, 121] and st == "truncated"
    assert td.encode(CharTok(), "abcd", "x", max_len=4)[2] == "prompt_too_long"


def test_tokenize_counts_truncated_dropped_and_empty(caplog):
    df = sft_df(4)
    df.loc[1, "response"] = "   "  # empty response
    df.loc[2, "prompt"] = "P" * 50  # prompt alone over max_len
    ex = td.tokenize_examples(df, CharTok(), "sft", max_len=6, where="ex.parquet")
    assert ex.stats == {"rows": 4, "kept": 2, "truncated": 1, "dropped_prompt_too_long": 1,
                        "dropped_empty_response": 1}
    assert ex.rows.tolist() == [0, 3]
    assert "ex.parquet" in caplog.text and "prompt too long" in caplog.text


@pytest.mark.parametrize("bad,match", [(float("nan"), "row 2, column 'weight'"), (-0.5, "row 2, column 'weight'")])
def test_bad_weights_name_row_and_column(bad, match):
    df = sft_df(4)
    df.loc[2, "weight"] = bad
    with pytest.raises(TableError, match=match):
        td.tokenize_examples(df, CharTok(), "sft", max_len=64, where="ex.parquet")


def test_missing_columns_and_reference():
    with pytest.raises(TableError, match=r"ex.parquet: missing column\(s\) \['response'\]"):
        td.check_examples(sft_df().drop(columns="response"), "sft", "ex.parquet")
    dpo = pd.DataFrame({"question_id": ["a"], "prompt": ["p"], "chosen": ["c"], "rejected": ["r"], "weight": [1.0]})
    with pytest.raises(TableError, match="reference phase"):
        td.check_examples(dpo, "dpo", "ex.parquet", need_reference=True)
    kto = pd.DataFrame({"question_id": ["a"], "prompt": ["p"], "response": ["c"], "label": ["yes"],
                        "kl_response": ["k"], "weight": [1.0]})
    with pytest.raises(TableError, match="row 0, column 'label'"):
        td.check_examples(kto, "kto", "ex.parquet")


def test_nothing_left_is_an_error():
    df = sft_df(2)
    df["prompt"] = "P" * 100
    with pytest.raises(TableError, match="no usable example"):
        td.tokenize_examples(df, CharTok(), "sft", max_len=8)


def test_plan_is_deterministic_and_independent_of_the_world():
    lengths = np.random.default_rng(0).integers(5, 200, size=37)
    a = td.plan(lengths, 8, 2, epochs=2, seed=3)
    b = td.plan(lengths, 8, 2, epochs=2, seed=3)
    assert a == b and len(a) == 2 * (37 // 8)
    # every step holds B distinct examples; an epoch never repeats an example
    for s in a:
        flat = [j for mb in s for j in mb]
        assert len(flat) == 8 == len(set(flat))
    assert len({j for s in a[:4] for mb in s for j in mb}) == 32
    # the same global batches with micro 1 (more ranks or more accumulation): same examples per step
    c = td.plan(lengths, 8, 1, epochs=2, seed=3)
    assert [sorted(j for mb in s for j in mb) for s in a] == [sorted(j for mb in s for j in mb) for s in c]
    # rank r gets micro-batches r, r + world, ...
    assert td.rank_micro_batches(a[0], 1, 2) == [a[0][1], a[0][3]]


def test_length_grouping_reduces_padding():
    lengths = np.random.default_rng(1).integers(10, 500, size=256)
    per_seq = [[int(L)] for L in lengths]
    grouped = td.padding_fraction(td.plan(lengths, 16, 4, 1, 0, group_by_length=True), per_seq)
    ungrouped = td.padding_fraction(td.plan(lengths, 16, 4, 1, 0, group_by_length=False), per_seq)
    assert grouped < 0.1 < ungrouped


def test_collate_masks():
    # seq 0: prompt [5, 6], response [7] + EOS; seq 1: prompt [5], response [8, 9] + EOS + nothing.
    b = td.collate([([5, 6, 7, 1], 2), ([5, 8, 9, 1, 2], 1)], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 0], [5, 8, 9, 1, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
