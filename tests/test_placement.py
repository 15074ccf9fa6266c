"""GPU placement on logical GPUs, for real: `east-ds run` against a Ray head advertising 2 GPUs on this CPU
machine. The engines and trainer ranks say from inside where they landed (placement.json: node, placement group,
the GPU ids Ray gave them, CUDA_VISIBLE_DEVICES, their own device and process-group backend), and record when they
slept, woke, scored and trained (each iteration's metrics.json, "actor_events"). Also: a run that cannot be
scheduled fails with what it asked for and what is free, and nothing waits for ever."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from test_driver import _write_config, east_ds_run, events, located

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parent.parent
TWO_RANKS = {"global_batch_size": 4, "micro_batch_size": 1, "gradient_accumulation_steps": 2, "num_ranks": 2}


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """For runs that must stop before any engine starts: any model directory will do."""
    from east_ds.data.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("untrained") / "tiny")


def test_colocated_dpo_on_logical_gpus(logical_gpu_head, tmp_path, warm_model):
    """2 engines and 2 ranks on 2 logical GPUs: rank r shares engine r's bundle, half a GPU each; the engines
    sleep before the reference phase and wake after training, once per iteration, then take the new weights
    (here through the object store: the driver sends the checkpoint's tensors). DPO's reference phase fills the
    reference log-probs of every chosen and rejected response. (Split placement: tests/test_driver.py.)"""
    cfg = _write_config(tmp_path, warm_model, "colocated", loss="dpo", beta=0.1, **TWO_RANKS)
    r = east_ds_run(logical_gpu_head, cfg, "placement.mode=colocated", "rollout.num_engines=2",
                    "rollout.weight_sync=object_store")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = tmp_path / "runs" / "colocated"
    where = located(run_dir)
    engines, ranks = where["engines"], where["ranks"]
    assert where["cluster_gpus"] == 2 and len(engines) == 2 and len(ranks) == 2
    pg = engines[0]["placement_group"]
    assert pg and all(x["placement_group"] == pg for x in engines + ranks)  # one group for all four actors
    assert [e["gpu_ids"] for e in engines] == [["0"], ["1"]] or [e["gpu_ids"] for e in engines] == [["1"], ["0"]]
    for e, rk in zip(engines, ranks):
        # rank r is on engine r's bundle: same node, same group, the same (only) GPU of that bundle
        assert (rk["node_id"], rk["gpu_ids"]) == (e["node_id"], e["gpu_ids"])
        assert e["cuda_visible_devices"] == rk["cuda_visible_devices"] == e["gpu_ids"][0]
        assert e["resources"] == rk["resources"] == {"CPU": 1.0, "GPU": 0.5}
        # their own device decides: no CUDA here, so no sleep mode and a gloo process group
        assert not e["cuda"] and not e["on_gpu"] and not e["sleep_mode"]
        assert not rk["cuda"] and rk["backend"] == "gloo"
    for k in (1, 2):
        ev = events(run_dir, k)
        for i in (0, 1):
            mine = [what for who, what in ev if who == f"engine {i}"]
            # device_plan.sleep_plan: the weights' memory wakes, the new weights load, then the KV cache wakes
            assert mine == ["sleep", "wake weights", "update_weights object_store", "wake kv_cache"], (k, ev)
        order = [what for who, what in ev if who in ("engine 0", "rank 0")]
        assert order.index("sleep") < order.index("reference start") < order.index("reference end") \
            < order.index("fit start") < order.index("fit end") < order.index("wake weights"), (k, ev)
        it = run_dir / f"iter_{k}"
        assert (it / "checkpoint" / "config.json").is_file()
        assert "reference" in json.loads((it / "metrics.json").read_text())["phase_seconds"]
        ex = pd.read_parquet(it / "reference.parquet")  # the reference phase's own table
        for col in ("ref_chosen_logp", "ref_rejected_logp"):
            assert ex[col].notna().all() and (ex[col] < 0).all()  # summed log-probs of real responses
        kept = pd.read_parquet(it / "questions.parquet").query("kept")
        assert abs(kept["weight"].mean() - 1.0) < 1e-9


@pytest.mark.parametrize("mode", ["colocated", "split"])
def test_no_resources_fails_at_once_naming_the_ask(logical_gpu_head, tmp_path, untrained_model, mode):
    """4 engines on a cluster of 2 GPUs can never be placed: the run stops before starting anything (exit 2)."""
    cfg = _write_config(tmp_path, untrained_model, f"small_{mode}")
    r = east_ds_run(logical_gpu_head, cfg, f"placement.mode={mode}", "rollout.num_engines=4")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "east-ds run: error: the cluster can never hold this run: " in r.stderr, r.stderr[-3000:]
    bundles = {"colocated": "rollout engines + trainer ranks need 4 GPUs (1 bundle of {GPU: 1, CPU: 2}, "
                            "3 bundles of {GPU: 1, CPU: 1}, PACK)",
               "split": "rollout engines + trainer ranks need 5 GPUs (4 bundles of {GPU: 1, CPU: 1}, PACK + "
                        "1 bundle of {GPU: 1, CPU: 1}, PACK)"}[mode]
    assert f"{bundles}; the cluster has 2 in all" in r.stderr
    assert "Traceback" not in r.stderr


def test_placement_group_times_out_naming_what_is_free(logical_gpu_head, tmp_path, untrained_model):
    """With wait_for_resources the engines' placement group waits, but only schedule_timeout_s: then the run
    fails (exit 2) saying what was asked and what the cluster has free, and gives back what it held."""
    cfg = _write_config(tmp_path, untrained_model, "wait")
    t0 = time.monotonic()
    r = east_ds_run(logical_gpu_head, cfg, "placement.mode=split", "rollout.num_engines=4",
                    "placement.wait_for_resources=true", "placement.schedule_timeout_s=5")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("east-ds run: error: rollout engines not scheduled within 5 s: asked for 4 bundles of "
            "{GPU: 1, CPU: 1}, PACK (in all GPU 4, CPU 4); the cluster has free: GPU 2, CPU 8") in r.stderr
    assert "waiting up to 5 s for resources" in r.stdout
    print(f"no-resources error after {time.monotonic() - t0:.1f} s (timeout 5 s)")


def test_run_directory_no_node_can_see_fails_at_once(logical_gpu_head, tmp_path, untrained_model):
    """The driver's run directory is a tmpfs in the driver's own mount namespace, so the node cannot see it:
    the run stops before any engine starts (exit 2), naming the node and the path."""
    import os
    import shutil

    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give the driver a mount the node cannot see")
    cfg = _write_config(tmp_path, untrained_model, "private")
    runs = tmp_path / "private_runs"
    runs.mkdir()
    address, env = logical_gpu_head
    cmd = (f"mount -t tmpfs none {runs} && {sys.executable} -m east_ds.cli run {cfg} output_dir={runs} "
           f"placement.ray_address={address}")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", cmd], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"does not see {runs / 'private'} as the driver does: it cannot read the token file" in r.stderr
    assert "east-ds run: error: node " in r.stderr and "phase" not in r.stdout  # nothing started
    assert list(runs.iterdir()) == []  # outside the driver's namespace nothing was written
