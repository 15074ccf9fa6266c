"""A diverged training step stops the run: the check, its error, the record it leaves, the resume rule, and the
real thing (DeepSpeed at lr 1e8 on CPU; two gloo ranks that must agree; one `east-ds run` that stops and resumes).
"""

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sft_examples import write_sft_examples

from east_ds.config import ModelConfig, RunConfig, TrainConfig, load_config
from east_ds.rundir import RunDir, RunDirError, iteration_number
from east_ds.training import divergence as dv
from east_ds.training.divergence import TrainingDiverged

ROOT = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------------------------------------------
# The check, the error, the record (no DeepSpeed)


def test_a_step_is_sound_only_when_its_loss_and_gradient_norm_are_finite():
    assert dv.problems(2.5, 7.1) == []
    assert dv.problems(2.5, None) == []  # no norm computed: nothing to check
    assert dv.problems(NAN, 7.1) == ["loss nan"]
    assert dv.problems(INF, 7.1) == ["loss inf"]
    assert dv.problems(2.5, INF) == ["gradient norm inf"]
    assert dv.problems(2.5, -INF) == ["gradient norm -inf"]
    assert dv.problems(NAN, NAN) == ["loss nan", "gradient norm nan"]
    # fp16's loss scaler skipping an overflowing step is routine; a non-finite loss is not
    assert dv.problems(2.5, INF, skipped_by_loss_scaling=True) == []
    assert dv.problems(NAN, INF, skipped_by_loss_scaling=True) == ["loss nan"]


def test_the_error_names_iteration_step_values_and_what_to_change(tmp_path):
    out = tmp_path / "runs" / "demo" / "iter_3" / "train"
    e = dv.diverged_error(out, "runs/demo/iter_3/examples.parquet", 2, 12, ["gradient norm inf"], 9.5e7, 1e8,
                          loss=6.2, grad_norm=INF)
    msg = str(e)
    assert "\n" not in msg  # one paragraph
    assert msg.startswith("training diverged in iteration 3 at step 2 of 12: gradient norm inf")
    assert "learning rate 9.5e+07 at this step" in msg and "training.lr (now 1e+08)" in msg
    assert "training.warmup_ratio" in msg and "runs/demo/iter_3/examples.parquet" in msg
    assert "nothing of it was published" in msg
    assert msg.endswith("rerun the same command: the run resumes, and iteration 3's training starts again from "
                        "the iteration's starting policy.")
    # it crosses the Ray actor boundary by pickling
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is TrainingDiverged and str(back) == msg
    assert (back.step, back.loss, math.isinf(back.grad_norm)) == (2, 6.2, True)
    # outside a run directory it names the directory and the starting model instead
    plain = str(dv.diverged_error(tmp_path / "out", "x.parquet", 1, 4, ["loss nan"], 1.0, 1.0))
    assert plain.startswith("training diverged at step 1 of 4: loss nan")
    assert plain.endswith("training starts again from the starting model.")


def test_iteration_number_of_a_path():
    assert iteration_number("runs/x/iter_4/train") == 4
    assert iteration_number("runs/x/iter_12") == 12
    assert iteration_number("runs/x/train") is None
    assert iteration_number("runs/iter_x/train") is None


def test_record_drops_the_deepspeed_checkpoint_and_forget_clears_the_record(tmp_path):
    (tmp_path / "ds_checkpoint" / "step_1").mkdir(parents=True)
    (tmp_path / "ds_checkpoint" / "latest").write_text("step_1")
    assert dv.forget(tmp_path) is None  # no divergence here: an ordinary checkpoint is left alone
    assert (tmp_path / "ds_checkpoint" / "latest").is_file()
    dv.record(tmp_path, dv.diverged_error(tmp_path, "x", 2, 4, ["loss nan"], 1.0, 1.0, loss=NAN, grad_norm=None))
    assert not (tmp_path / "ds_checkpoint").exists()
    rec = json.loads((tmp_path / dv.RECORD).read_text())
    assert rec["step"] == 2 and math.isnan(rec["loss"]) and rec["grad_norm"] is None
    (tmp_path / "ds_checkpoint").mkdir()  # as if a kill had interrupted the removal
    assert dv.forget(tmp_path)["step"] == 2
    assert not (tmp_path / "ds_checkpoint").exists() and not (tmp_path / dv.RECORD).exists()


# ----------------------------------------------------------------------------------------------------------------
# The resume rule of the run directory


def _claim(tmp_path: Path, **training) -> RunDir:
    cfg = RunConfig(name="r", output_dir=str(tmp_path), iterations=3,
                    training=dataclasses.replace(TrainConfig(), **training))
    rd = RunDir(cfg)
    rd.claim()
    return rd


def _stopped_in_training(rd: RunDir, k: int) -> None:
    """Iterations 1..k-1 finished; iteration k stopped while training (partial DeepSpeed state)."""
    (rd.path / "iter_0").mkdir()
    (rd.path / "iter_0" / "metrics.json").write_text("{}")
    for j in range(1, k):
        (rd.iteration(j).checkpoint).mkdir(parents=True)
        rd.iteration(j).metrics.write_text("{}")
    (rd.iteration(k).train / "ds_checkpoint").mkdir(parents=True)
    rd.iteration(k).examples.write_text("x")


@pytest.mark.parametrize("k", [1, 2])
def test_optimizer_settings_may_change_while_the_stopped_iteration_has_not_finished_training(tmp_path, k, capsys):
    _stopped_in_training(_claim(tmp_path, lr=1e8), k)
    rd = _claim(tmp_path, lr=1e-5, warmup_ratio=0.3, grad_clip=0.5)
    assert yaml.safe_load((rd.path / "config.yaml").read_text())["training"]["lr"] == 1e-5
    assert not rd.iteration(k).train.exists()  # its partial training starts again from its starting policy
    assert rd.iteration(k).examples.is_file()  # the phases before training stay done
    assert all(rd.iteration(j).checkpoint.is_dir() for j in range(1, k))  # published checkpoints stay
    assert (f"training.grad_clip, training.lr, training.warmup_ratio changed: iteration {k}'s training starts "
            "again") in capsys.readouterr().out


def test_optimizer_settings_are_refused_once_training_finished_or_with_other_changes(tmp_path):
    rd = _claim(tmp_path, lr=1e-5)
    _stopped_in_training(rd, 1)
    with pytest.raises(RunDirError, match=r"keys \['training.epochs'\]"):  # not an optimizer setting
        _claim(tmp_path, lr=1e-6, epochs=5)
    assert rd.iteration(1).train.is_dir()  # a refused claim removes nothing
    rd.iteration(1).checkpoint.mkdir()  # iteration 1 trained with lr 1e-5 and published; iteration 2 not begun
    with pytest.raises(RunDirError, match=r"keys \['training.lr'\]\); training.lr may change only while the "
                                          r"iteration a run stopped in has not finished training"):
        _claim(tmp_path, lr=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Real DeepSpeed (CPU, fp32, tiny model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from east_ds.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("diverge")
    model = str(build_tiny_model(root / "model"))
    tok = AutoTokenizer.from_pretrained(model)
    return {"root": root, "model": model, "examples": write_sft_examples(tok, root / "examples.parquet", 12, (0.5, 2))}


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_fit_stops_at_the_diverged_step_and_a_lower_lr_trains_again_from_the_start(tiny, stage):
    """At lr 1e8 the first step is finite and ruins the weights; the second step's gradient norm is not finite
    (ZeRO 2: DeepSpeed reports inf and would skip the step; ZeRO 0: the norm of NaN gradients). fit raises naming
    step 2, exports nothing and leaves no DeepSpeed checkpoint (one was saved after step 1). The same directory
    then trains at a sane lr from step 0, not from the diverged call's state."""
    from east_ds.training.engine import fit

    cfg = TrainConfig(loss="sft", lr=1e8, epochs=1, global_batch_size=4, micro_batch_size=2,
                      gradient_accumulation_steps=2, warmup_ratio=0.0, max_len=96, save_every_steps=1,
                      deepspeed_config=f"ds_configs/zero{stage}.json", gradient_checkpointing=False)
    out = tiny["root"] / f"iter_2_zero{stage}" / "train"
    with pytest.raises(TrainingDiverged, match=r"at step 2 of 3: gradient norm (inf|nan)") as e:
        fit(tiny["model"], cfg, ModelConfig(dtype="float32"), tiny["examples"], str(out), progress=False)
    assert e.value.step == 2 and math.isfinite(e.value.loss)
    assert not (out / "hf").exists() and not (out / "hf.tmp").exists()
    assert not (out / "ds_checkpoint").exists() and not (out / "train_summary.json").exists()
    assert json.loads((out / dv.RECORD).read_text())["step"] == 2
    assert _steps(out) == [1, 2]  # the diverged step is in the log, for the user to read

    summary = fit(tiny["model"], dataclasses.replace(cfg, lr=1e-3), ModelConfig(dtype="float32"),
                  tiny["examples"], str(out), progress=False)
    assert summary["start_step"] == 0 and summary["steps"] == 3
    assert summary["optimizer"]["lr"] == 1e-3 and math.isfinite(summary["last_grad_norm"])
    assert (out / "hf" / "model.safetensors").is_file() and not (out / dv.RECORD).exists()
    assert _steps(out) == [1, 2, 3]


def _rank(rank: int, port: int, bad_rank: int, result_dir: str) -> None:
    """One of two gloo ranks: only `bad_rank` saw a non-finite gradient norm; both must say the step diverged."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    found = dv.agree(dv.problems(1.5, INF if rank == bad_rank else 3.0), torch.device("cpu"))
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(found))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_to_stop_when_one_sees_a_non_finite_norm(tmp_path):
    """A rank that stopped alone would leave the others waiting in the next collective: the flag is all-reduced.
    (The engine's check is this call: TrainingEngine.diverged.)"""
    import torch.multiprocessing as mp

    from conftest import free_ports

    mp.spawn(_rank, args=(free_ports(1)[0], 1, str(tmp_path)), nprocs=2, join=True)
    assert json.loads((tmp_path / "rank0.json").read_text()) == ["a non-finite loss or gradient norm on another rank"]
    assert json.loads((tmp_path / "rank1.json").read_text()) == ["gradient norm inf"]
    assert dv.agree(["loss nan"], None) == ["loss nan"]  # a lone process: no process group to ask


# ----------------------------------------------------------------------------------------------------------------
# One real run: `east-ds run` stops with exit 2, then resumes at a lower lr


def _run_config(tmp: Path, model: Path) -> Path:
    from east_ds.data.synthetic import make_problems, to_gsm8k_rows
    from east_ds.tables import write_table

    data = tmp / "data"
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(16, seed=11, prefix="tr"))), data / "train.jsonl")
    cfg = {"name": "diverge", "output_dir": str(tmp / "runs"), "iterations": 1,
           "model": {"path": str(model), "dtype": "float32"},
           "data": {"train": str(data / "train.jsonl"), "format": "gsm8k"},  # no test set: no evaluation
           "rollout": {"n": 4, "max_new_tokens": 48, "max_model_len": 256, "num_engines": 1},
           "weighting": {"a": 1.0},
           "training": {"loss": "sft", "lr": 1.0e8, "epochs": 2, "global_batch_size": 4, "micro_batch_size": 2,
                        "gradient_accumulation_steps": 2, "warmup_ratio": 0.0, "max_len": 256, "save_every_steps": 1,
                        "gradient_checkpointing": False, "deepspeed_config": str(ROOT / "ds_configs/zero2.json")}}
    path = tmp / "diverge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_east_ds_run_stops_on_divergence_and_resumes_at_a_lower_lr(tmp_path, warm_model):
    """At lr 1e8: exit 2 with one paragraph naming iteration 1 and the step, no checkpoint published (the next
    policy is still the starting model). Rerun with a lower lr: the finished phases are skipped, training starts
    again from step 0, the checkpoint is published and loaded into the engines, and the run finishes."""
    cfg_path = _run_config(tmp_path, warm_model)
    it1 = tmp_path / "runs" / "diverge" / "iter_1"
    cmd = [sys.executable, "-m", "east_ds.cli", "run", str(cfg_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
    error = [x for x in first.stderr.splitlines() if x.startswith("east-ds run: error:")]
    assert len(error) == 1 and "Traceback" not in error[0], first.stderr[-3000:]
    assert "training diverged in iteration 1 at step" in error[0] and "training.lr (now 1e+08)" in error[0]
    assert "rerun the same command: the run resumes" in error[0]
    assert not (it1 / "checkpoint").exists() and not (it1 / "train" / "hf").exists()
    assert not (it1 / "train" / "ds_checkpoint").exists() and not (it1 / "metrics.json").exists()
    assert RunDir(load_config(cfg_path)).policy_path() == str(warm_model)  # the next policy: the starting model
    examples_mtime = (it1 / "examples.parquet").stat().st_mtime_ns

    done = subprocess.run(cmd + ["training.lr=0.0003"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training.lr changed: iteration 1's training starts again" in done.stdout
    assert "phase rollout: output present, skipped" in done.stdout and "phase update_weights" in done.stdout
    assert (it1 / "examples.parquet").stat().st_mtime_ns == examples_mtime
    summary = json.loads((it1 / "train" / "train_summary.json").read_text())
    assert summary["start_step"] == 0 and summary["optimizer"]["lr"] == 0.0003
    assert (it1 / "checkpoint" / "config.json").is_file() and (it1 / "metrics.json").is_file()
    assert json.loads((it1 / "metrics.json").read_text())["train"]["steps"] == summary["steps"]
