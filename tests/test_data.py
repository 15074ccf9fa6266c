"""Datasets from local files (the hub path cannot be exercised here), gold answers, and prompts."""

import json
from pathlib import Path

import pandas as pd
import pytest

from east_ds.data.load import FALLBACK_TEMPLATE, SYSTEM_PROMPT, gsm8k_gold, load_dataset, render_prompt
from east_ds.tables import TableError, write_table

FIX = Path(__file__).parent / "fixtures"


def test_gsm8k_gold():
    assert gsm8k_gold("48/2 = 24\n#### 1,072") == "1072"
    assert gsm8k_gold("a #### 3\nb\n#### 72") == "72"  # the last #### line
    with pytest.raises(ValueError):
        gsm8k_gold("no marker")


def test_load_gsm8k_jsonl_and_parquet(tmp_path):
    df = load_dataset(str(FIX / "gsm8k_sample.jsonl"), "gsm8k")
    assert list(df.columns) == ["question_id", "question", "gold"]
    assert df["gold"].tolist()[:2] == ["72", "10"]
    assert df["question_id"].tolist()[0] == "train-0"
    raw = pd.read_json(FIX / "gsm8k_sample.jsonl", lines=True)
    write_table(raw, tmp_path / "g.parquet")
    pd.testing.assert_frame_equal(load_dataset(str(tmp_path / "g.parquet"), "gsm8k", limit=3), df.iloc[:3])


def test_load_math_uses_last_boxed_or_answer(tmp_path):
    df = load_dataset(str(FIX / "math_sample.jsonl"), "math")
    assert df["gold"].tolist()[:2] == ["0", "8+4i"]
    assert df["question_id"].iloc[0].startswith("test/") or df["question_id"].iloc[0].endswith(".json")
    rows = [{"problem": "p", "solution": "so \\boxed{3}", "answer": "\\frac{1}{2}"}]
    write_table(pd.DataFrame(rows), tmp_path / "m.jsonl")
    assert load_dataset(str(tmp_path / "m.jsonl"), "math")["gold"].tolist() == ["\\frac{1}{2}"]


def test_bad_rows_name_file_and_row(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n"
                 + json.dumps({"question": "q2", "answer": "no final line"}) + "\n")
    with pytest.raises(TableError, match=r"bad\.jsonl: row 1"):
        load_dataset(str(f), "gsm8k")
    f.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(TableError, match="line 2"):
        load_dataset(str(f), "gsm8k")
    f.write_text(json.dumps({"text": "q"}) + "\n")
    with pytest.raises(TableError, match="question"):
        load_dataset(str(f), "gsm8k")
    with pytest.raises(TableError, match="not a local file|no such file"):
        load_dataset(str(tmp_path / "missing.jsonl"), "gsm8k")


def test_prompt_with_chat_template_and_fallback(tiny_tokenizer):
    text = render_prompt(tiny_tokenizer, "What is 2+3?")
    assert text.startswith(tiny_tokenizer.bos_token)
    assert SYSTEM_PROMPT in text and "What is 2+3?" in text
    assert text.endswith("<|assistant|>")  # the generation prompt: the model answers next

    class Plain:  # a base-model tokenizer without a chat template
        chat_template = None

    assert render_prompt(Plain(), "Q?") == FALLBACK_TEMPLATE.format(system=SYSTEM_PROMPT, question="Q?")
