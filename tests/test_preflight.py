"""`east-ds check`: every problem of a config at once, without building an engine or a trainer; and `east-ds run`
failing on bad input before it claims the run name."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from east_ds.cli import main
from east_ds.config import load_config
from east_ds.checks.preflight import PreflightError, iteration_bytes
from east_ds.rundir import RunDir, RunDirError
from east_ds.tables import write_table

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from east_ds.data.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")  # context 1024 (max_position_embeddings)


def _config(tmp: Path, model: Path, **sections) -> Path:
    rows = [json.loads(x) for x in (FIX / "gsm8k_sample.jsonl").read_text().splitlines()]
    write_table(pd.DataFrame(rows), tmp / "train.jsonl")
    write_table(pd.DataFrame(rows[:2]), tmp / "test.jsonl")
    cfg = {"name": "c", "output_dir": str(tmp / "runs"),
           "model": {"path": str(model), "dtype": "float32"},
           "data": {"train": str(tmp / "train.jsonl"), "test": str(tmp / "test.jsonl")},
           "rollout": {"max_new_tokens": 64, "max_model_len": 512},
           "training": {"global_batch_size": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
                        "max_len": 512, "deepspeed_config": str(ROOT / "ds_configs" / "zero2.json")},
           "evaluation": {"max_new_tokens": 64}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_shipped_config_without_data_and_model_lists_both(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/ here; HF_HUB_OFFLINE=1 and the model is not cached
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["check", str(ROOT / "configs" / "gsm8k_sft_east.yaml"), "--no-cluster"]) == 1
    out = capsys.readouterr().out
    assert "model     PROBLEM  model.path: model 'meta-llama/Llama-3.2-1B-Instruct'" in out
    assert "data      PROBLEM  data.train: data/gsm8k_train.jsonl: no such file; `east-ds data gsm8k" in out
    assert "data      PROBLEM  data.test: data/gsm8k_test.jsonl" in out
    assert "3 problem(s) found" in out
    assert not (tmp_path / "runs").exists()  # nothing claimed or created


def test_good_config_passes(tmp_path, tiny_model, capsys):
    assert main(["check", str(_config(tmp_path, tiny_model)), "--no-cluster"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "PROBLEM" not in out
    assert "chat template found" in out
    assert "data.train" in out and "5 questions, gold parsed 100%" in out and "0 would be skipped" in out
    assert "2 x 2 x 1 ranks = global batch 4" in out


def test_every_problem_at_once(tmp_path, tiny_model, capsys):
    cfg = _config(tmp_path, tiny_model, rollout={"max_model_len": 4096, "max_new_tokens": 4000},
                  training={"max_len": 2048, "micro_batch_size": 3, "deepspeed_config": "nowhere/zero9.json"},
                  data={"test": str(tmp_path / "missing_test.jsonl")})
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    assert main(["check", str(cfg), "--no-cluster"]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if "PROBLEM" in line]
    text = "\n".join(problems)
    assert "rollout.max_model_len=4096 exceeds the model's context length (1024 tokens)" in text
    assert "training.max_len=2048 exceeds the model's context length" in text
    assert "1 of 6 rows have no parsable gsm8k gold answer (first: row 5)" in text
    assert "missing_test.jsonl: no such file" in text
    assert "micro_batch_size (3) x gradient_accumulation_steps (2) x world size (1) = 6 != global_batch_size" in text
    assert "DeepSpeed config 'nowhere/zero9.json' not found" in text
    assert len(problems) == 6


def test_prompts_too_long_and_bad_keys(tmp_path, tiny_model, capsys):
    cfg = _config(tmp_path, tiny_model, rollout={"max_model_len": 100, "max_new_tokens": 64},
                  training={"max_len": 100})
    assert main(["check", str(cfg), "--no-cluster"]) == 1
    assert "data.train: every prompt is too long" in capsys.readouterr().out
    assert main(["check", str(cfg), "rollout.max_new_tokns=3", "--no-cluster"]) == 1
    assert "unknown config key 'rollout.max_new_tokns'" in capsys.readouterr().out


def test_disk_estimate():
    # 1B parameters in bf16: 2 GB checkpoint; DeepSpeed checkpoint 2 GB weights + 12 GB fp32 master and moments
    assert iteration_bytes(10**9, "bfloat16") == {"checkpoint": 2 * 10**9, "deepspeed": 14 * 10**9,
                                                  "total": 16 * 10**9}
    assert iteration_bytes(10**9, "float32")["deepspeed"] == 12 * 10**9  # fp32: the weights are the master copy
    # without save_every_steps / max_steps training writes no DeepSpeed checkpoint (training.engine.fit)
    assert iteration_bytes(10**9, "bfloat16", deepspeed_checkpoints=False) == {
        "checkpoint": 2 * 10**9, "deepspeed": 0, "total": 2 * 10**9}


def test_run_with_a_mistyped_path_claims_nothing(tmp_path, tiny_model):
    """The run fails before Ray or the engines start, without writing the run directory; the corrected command
    then claims the name. A directory with no iteration output may be claimed by another config."""
    from east_ds.driver import run

    cfg = load_config(_config(tmp_path, tiny_model), [f"data.train={tmp_path / 'tran.jsonl'}"])
    with pytest.raises(PreflightError, match=r"tran\.jsonl: no such file"):
        run(cfg)
    assert not cfg.run_dir.exists()

    RunDir(cfg).claim()  # e.g. a start that failed later, before its first phase wrote anything
    fixed = load_config(_config(tmp_path, tiny_model))
    RunDir(fixed).claim()
    assert yaml.safe_load((fixed.run_dir / "config.yaml").read_text())["data"]["train"].endswith("/train.jsonl")
    (fixed.run_dir / "iter_0").mkdir()  # once a phase has written output, a different config is refused
    with pytest.raises(RunDirError, match="different config"):
        RunDir(cfg).claim()
    # a resume may extend the run, log elsewhere and run on another cluster layout; what it computes is fixed
    RunDir(load_config(_config(tmp_path, tiny_model), [
        "logging.wandb=true", "iterations=3", "placement.mode=split", "placement.schedule_timeout_s=5",
        "placement.engine_resources={rollout_node: 1}", "rollout.weight_sync=broadcast"])).claim()
    for changed in ("rollout.n=3", "weighting.a=2", "training.lr=1e-3", "rollout.temperature=0.5"):
        with pytest.raises(RunDirError, match=rf"different config \(keys \['{changed.split('=')[0]}'\]\)"):
            RunDir(load_config(_config(tmp_path, tiny_model), [changed])).claim()


@pytest.mark.slow
@pytest.mark.cluster
def test_cluster_part_on_a_local_ray(tmp_path, tiny_model, ray_session, capsys):
    """The cluster checks against the session's local Ray (8 logical CPUs, no GPU): engines and ranks need a CPU
    each, and the single node sees the output directory and the model."""
    cfg = _config(tmp_path, tiny_model)
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "cluster   ok       needs rollout engines CPU 1; trainer ranks CPU 1; free" in out
    assert f"every node sees {(tmp_path / 'runs').resolve()}" in out and f"every node sees {tiny_model}" in out
    assert main(["check", str(cfg), "rollout.num_engines=64", "training.micro_batch_size=3"]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if "PROBLEM" in line]
    assert any("cluster" in p and "need 65 CPUs" in p and "the cluster has" in p for p in problems)
    assert any("training" in p and "micro_batch_size (3)" in p for p in problems)  # listed together
