"""`east-ds data`: the shipped configs' data files from local copies in the hub layouts (built here from the
samples in tests/fixtures as small Parquet files), row counts, gold-parse share, checksums, and the errors."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from east_ds.cli import main
from east_ds.config import load_config
from east_ds.data.load import load_dataset
from east_ds.data.prep import MATH_SUBJECTS, DataPrepError, prepare
from east_ds.tables import write_table

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIX / name).read_text().splitlines() if line.strip()]


def test_gsm8k_from_the_hub_layout(tmp_path, capsys):
    """openai/gsm8k as the hub stores it: main/ and socratic/ configs, one Parquet file per split."""
    src, out = tmp_path / "gsm8k", tmp_path / "data"
    rows = _rows("gsm8k_sample.jsonl")
    bad = {"question": "How many?", "answer": "no final line here"}
    write_table(pd.DataFrame(rows[:3] + [bad]), src / "main" / "train-00000-of-00001.parquet")
    write_table(pd.DataFrame(rows[3:]), src / "main" / "test-00000-of-00001.parquet")
    socratic = [{**r, "question": "SOCRATIC " + r["question"]} for r in rows]
    write_table(pd.DataFrame(socratic), src / "socratic" / "train-00000-of-00001.parquet")

    assert main(["data", "gsm8k", "--out", str(out), "--source", str(src)]) == 0
    printed = capsys.readouterr().out
    train = load_dataset(str(out / "gsm8k_train.jsonl"), "gsm8k")
    test = load_dataset(str(out / "gsm8k_test.jsonl"), "gsm8k")
    assert train["gold"].tolist() == ["72", "10", "5"]  # the row without a gold answer is left out
    assert not train["question"].str.startswith("SOCRATIC").any()  # only the `main` config
    assert len(test) == len(rows) - 3
    assert "75.00%" in printed and "1 of 4 source rows left out" in printed
    for f in ("gsm8k_train.jsonl", "gsm8k_test.jsonl"):
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() in printed
    # the shipped configs read exactly these names
    cfg = load_config(ROOT / "configs" / "gsm8k_sft_east.yaml")
    assert {Path(cfg.data.train).name, Path(cfg.data.test).name} == {"gsm8k_train.jsonl", "gsm8k_test.jsonl"}


def test_math_from_per_subject_configs_and_an_incomplete_copy(tmp_path):
    """EleutherAI/hendrycks_math: one folder per subject, each with its train and test Parquet files."""
    src = tmp_path / "math"
    rows = _rows("math_sample.jsonl")
    for k, subject in enumerate(MATH_SUBJECTS):
        for split in ("train", "test"):
            part = [{**rows[k % len(rows)], "problem": f"{subject} {split} {k}"}]
            part = [{c: v for c, v in r.items() if c != "unique_id"} for r in part]  # as on the hub: no ids
            write_table(pd.DataFrame(part), src / subject / f"{split}-00000-of-00001.parquet")
    summary = prepare("math", tmp_path / "data", src)
    assert [Path(s["path"]).name for s in summary] == ["math_train.jsonl", "math_test.jsonl"]
    assert [s["rows"] for s in summary] == [7, 7] and all(s["gold_parsed"] == 1.0 for s in summary)
    train = load_dataset(summary[0]["path"], "math")
    assert train["question"].tolist()[:2] == ["algebra train 0", "counting_and_probability train 1"]
    assert train["question_id"].is_unique

    for f in (src / "geometry").iterdir():
        f.unlink()
    with pytest.raises(DataPrepError, match=r"none for \['geometry'\]"):
        prepare("math", tmp_path / "data2", src)


def test_math500_and_single_file_mirrors(tmp_path):
    # HuggingFaceH4/MATH-500: test.jsonl at the top of the repository
    m5 = tmp_path / "m5"
    rows = [{"problem": f"Problem {i}", **r, "unique_id": f"test/x/{i}.json"}
            for i, r in enumerate(_rows("math500_sample.jsonl"))]
    write_table(pd.DataFrame(rows), m5 / "test.jsonl")
    [s] = prepare("math500", tmp_path / "data", m5)
    assert Path(s["path"]).name == "math500_test.jsonl" and s["rows"] == len(rows)
    df = load_dataset(s["path"], "math")
    assert df["gold"].tolist() == [r["answer"] for r in rows]
    # a single-config mirror of MATH: data/<split>-*.parquet, several shards read in order
    mirror = tmp_path / "mirror"
    math = _rows("math_sample.jsonl")
    write_table(pd.DataFrame(math[:2]), mirror / "data" / "train-00000-of-00002.parquet")
    write_table(pd.DataFrame(math[2:]), mirror / "data" / "train-00001-of-00002.parquet")
    write_table(pd.DataFrame(math[:1]), mirror / "data" / "test-00000-of-00001.parquet")
    train, test = prepare("math", tmp_path / "data", mirror)
    assert load_dataset(train["path"], "math")["question_id"].tolist() == [r["unique_id"] for r in math]
    assert test["rows"] == 1


def test_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "gsm8k", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "hf download openai/gsm8k --repo-type dataset" in err and "--source" in err
    assert not (tmp_path / "d").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataPrepError, match=r"no file for split 'train'.*main/train-\*\.parquet"):
        prepare("gsm8k", tmp_path / "d", empty)
    write_table(pd.DataFrame([{"text": "q", "answer": "#### 1"}]), empty / "train.jsonl")
    with pytest.raises(DataPrepError, match="no `question` or `problem` column"):
        prepare("gsm8k", tmp_path / "d", empty)
