"""`east-ds eval` / `east-ds rollout` place their engines as `east-ds run` does: placement.* from --config and
overrides is honoured, and engines the cluster can never hold fail at once (exit 2) naming what they need and
what the cluster has, before any actor starts. The cluster tests join a private Ray head advertising 2 logical
GPUs (conftest.logical_gpu_head) from a subprocess; every one of them fails before an engine is built."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from east_ds.cluster.placement import Need, SchedulingTimeout
from east_ds.config import PlacementConfig, RolloutConfig
from east_ds.rollout.cli import check_engines_fit, engine_need

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "fixtures" / "gsm8k_sample.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# Pure: what the engines ask for, and whether it fits (no Ray)


def test_engine_need_on_gpus_is_one_pack_group_with_engine_resources():
    rollout = RolloutConfig(num_engines=2, tensor_parallel_size=2)
    # colocated is ignored: a single stage has no trainer to share the engines' bundles with
    need = engine_need(rollout, PlacementConfig(mode="colocated", engine_resources={"rollout_node": 1}), gpus=1)
    assert need == Need("rollout engines", [{"GPU": 1.0, "CPU": 1.0, "rollout_node": 1}] * 4, "PACK")


def test_engine_need_without_gpus_is_plain_actors_capped_at_the_cores():
    need = engine_need(RolloutConfig(num_engines=8, tensor_parallel_size=2), PlacementConfig(), gpus=0, cores=6)
    assert need == Need("rollout engines", [{"CPU": 1.0}] * 3, "")
    assert len(engine_need(RolloutConfig(num_engines=2), PlacementConfig(), gpus=0, cores=16).bundles) == 2


def test_check_engines_fit():
    need = engine_need(RolloutConfig(num_engines=4), PlacementConfig(), gpus=2)
    total = {"GPU": 2.0, "CPU": 8.0}
    with pytest.raises(SchedulingTimeout, match=r"the cluster can never hold these engines: rollout engines need "
                       r"4 GPUs \(4 bundles of \{GPU: 1, CPU: 1\}, PACK\); the cluster has 2 in all"):
        check_engines_fit(need, total, total, wait=False, timeout_s=300)
    # waiting for an autoscaling cluster: a note, no error
    assert check_engines_fit(need, total, total, wait=True, timeout_s=5).startswith(
        "[east-ds] waiting up to 5 s for resources: rollout engines need 4 GPUs")
    # enough in all, not free now: the note
    small = engine_need(RolloutConfig(num_engines=2), PlacementConfig(), gpus=2)
    assert "the cluster has 1 free" in check_engines_fit(small, total, {"GPU": 1.0, "CPU": 8.0}, False, 300)
    assert check_engines_fit(small, total, total, False, 300) == ""


# ---------------------------------------------------------------------------------------------------------------
# For real, against a Ray head with 2 logical GPUs


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """For commands that must stop before any engine starts: any model directory will do."""
    from east_ds.data.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("untrained") / "tiny")


def east_ds_eval(head, model: Path, out: Path, *args: str, flag_address: bool = True,
                 timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """`east-ds eval` in a subprocess joining `head`; (result, wall seconds, printed only: whether it failed at
    once or after waiting is read from what it says, never from the clock)."""
    address, env = head
    cmd = [sys.executable, "-m", "east_ds.cli", "eval", "--model", str(model), "--data", str(DATA),
           "--format", "gsm8k", "--out", str(out), *(["--ray-address", address] if flag_address else []), *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.cluster
def test_eval_more_engines_than_gpus_fails_at_once(logical_gpu_head, untrained_model, tmp_path):
    out = tmp_path / "eval.parquet"
    r, wall = east_ds_eval(logical_gpu_head, untrained_model, out, "--num-engines", "4")
    print(f"eval with 4 engines on 2 GPUs failed after {wall:.1f} s")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("error: the cluster can never hold these engines: rollout engines need 4 GPUs (4 bundles of "
            "{GPU: 1, CPU: 1}, PACK); the cluster has 2 in all") in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "waiting up to" not in r.stdout  # refused before any wait
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_eval_waiting_for_resources_times_out(logical_gpu_head, untrained_model, tmp_path):
    """placement.* overrides: wait_for_resources makes it wait, but only schedule_timeout_s."""
    out = tmp_path / "eval.parquet"
    r, wall = east_ds_eval(logical_gpu_head, untrained_model, out, "--num-engines", "4",
                           "placement.wait_for_resources=true", "placement.schedule_timeout_s=5")
    print(f"eval waiting 5 s for 4 engines on 2 GPUs failed after {wall:.1f} s")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "waiting up to 5 s for resources: rollout engines need 4 GPUs" in r.stdout, r.stdout[-3000:]
    assert ("error: rollout engines not scheduled within 5 s: asked for 4 bundles of {GPU: 1, CPU: 1}, PACK "
            "(in all GPU 4, CPU 4); the cluster has free: GPU 2") in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_eval_engine_resources_from_config_file_fail_at_once(logical_gpu_head, untrained_model, tmp_path):
    """placement.ray_address and placement.engine_resources from --config (no --ray-address flag)."""
    address, _ = logical_gpu_head
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"placement:\n  ray_address: '{address}'\n  engine_resources: {{nosuch: 1}}\n")
    out = tmp_path / "eval.parquet"
    r, wall = east_ds_eval(logical_gpu_head, untrained_model, out, "--config", str(cfg), flag_address=False)
    print(f"eval with engine_resources {{nosuch: 1}} failed after {wall:.1f} s")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("error: the cluster can never hold these engines: rollout engines need 1 nosuchs (1 bundle of "
            "{GPU: 1, CPU: 1, nosuch: 1}, PACK); the cluster has 0 in all") in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "waiting up to" not in r.stdout  # refused before any wait
    assert not out.exists()
