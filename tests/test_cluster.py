"""cluster.py: what a run asks Ray for (pure), and, on a real Ray, what is free and whether every node sees a path."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from east_ds.cluster.placement import Need, free_resources, placement_needs, shortfall
from east_ds.cluster.storage import check_shared_path
from east_ds.config import ConfigError, PlacementConfig, RolloutConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _needs(mode: str, engines: int, ranks: int, gpus: float, tp: int = 1) -> list[Need]:
    return placement_needs(RolloutConfig(num_engines=engines, tensor_parallel_size=tp),
                           TrainConfig(num_ranks=ranks), PlacementConfig(mode=mode), gpus)


def test_need_total_sums_bundles():
    need = Need("x", [{"GPU": 1, "CPU": 1}, {"GPU": 0.5, "CPU": 2, "special": 1}], "PACK")
    assert need.total() == {"GPU": 1.5, "CPU": 3.0, "special": 1.0}


def test_needs_without_gpus_are_plain_cpu_actors():
    needs = _needs("colocated", engines=3, ranks=2, gpus=0)
    assert [(n.what, n.bundles, n.strategy) for n in needs] == [
        ("rollout engines", [{"CPU": 1.0}] * 3, ""), ("trainer ranks", [{"CPU": 1.0}] * 2, "")]


def test_colocated_ranks_share_the_engine_bundles():
    [need] = _needs("colocated", engines=2, ranks=1, gpus=2, tp=2)  # 4 engine GPUs, rank 0 on bundle 0
    assert need.strategy == "PACK"
    assert need.bundles == [{"GPU": 1.0, "CPU": 2.0}] + [{"GPU": 1.0, "CPU": 1.0}] * 3
    assert need.total() == {"GPU": 4.0, "CPU": 5.0}


def test_colocated_more_ranks_than_engine_gpus_is_a_config_error():
    with pytest.raises(ConfigError, match=r"num_ranks \(3\).*= 2"):
        _needs("colocated", engines=2, ranks=3, gpus=8)


def test_split_ranks_need_gpus_of_their_own():
    engines, ranks = _needs("split", engines=4, ranks=2, gpus=8)
    assert engines.bundles == [{"GPU": 1.0, "CPU": 1.0}] * 4 and engines.strategy == "PACK"
    assert ranks.bundles == [{"GPU": 1.0, "CPU": 1.0}] * 2 and ranks.strategy == "PACK"


def test_shortfall_names_each_resource_that_does_not_fit():
    needs = _needs("split", engines=4, ranks=2, gpus=2)
    problems = shortfall(needs, {"GPU": 2.0, "CPU": 64.0})
    assert problems == [
        "rollout engines + trainer ranks need 6 GPUs (4 bundles of {GPU: 1, CPU: 1}, PACK + 2 bundles of "
        "{GPU: 1, CPU: 1}, PACK); the cluster has 2 free"]
    both = shortfall(needs, {"GPU": 1.0, "CPU": 5.0})
    assert len(both) == 2 and "need 6 CPUs" in both[1] and "has 5 free" in both[1]
    assert shortfall(needs, {"GPU": 6.0, "CPU": 6.0}) == []
    custom = [Need("trainer ranks", [{"CPU": 1, "trainer_node": 1}] * 2, "")]
    assert shortfall(custom, {"CPU": 8}) == [
        "trainer ranks need 2 trainer_nodes (2 x {CPU: 1, trainer_node: 1}); the cluster has 0 free"]


@pytest.mark.slow
@pytest.mark.cluster
def test_free_resources_and_shared_path_on_real_ray(ray_session, tmp_path):
    import ray

    free = free_resources()
    assert free["CPU"] == ray.available_resources()["CPU"]
    assert not any(k.startswith("node:") or k in ("memory", "object_store_memory") for k in free)

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert check_shared_path(tmp_path) == []  # a token file written and read back on the node
    assert not list(tmp_path.glob(".east_ds_shared_check_*"))  # and removed
    assert check_shared_path(tmp_path / "model" / "config.json") == []  # a file: compared by what is seen
    assert check_shared_path(tmp_path / "missing") == [f"{tmp_path / 'missing'}: does not exist on the driver's node"]


CHECK = """
import json, sys, ray
from east_ds.cluster.storage import check_shared_path
ray.init(address=sys.argv[1])
print("PROBLEMS", json.dumps(check_shared_path(sys.argv[2], timeout_s=60)), flush=True)
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_node_that_cannot_see_the_path_is_named(ray_session, tmp_path):
    """A driver whose run directory is a tmpfs only it can see (its own mount namespace): the node's worker reads
    the directory underneath, finds no token, and the check names the node and the path."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give the driver a mount the node cannot see")
    import ray

    gcs = ray.get_runtime_context().gcs_address
    private = tmp_path / "private"
    private.mkdir()
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    cmd = (f"mount -t tmpfs none {private} && {sys.executable} {script} {gcs} {private}")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", cmd], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [line] = [x for x in r.stdout.splitlines() if x.startswith("PROBLEMS ")]
    [problem] = json.loads(line.removeprefix("PROBLEMS "))
    node = ray.nodes()[0]
    assert f"node {node['NodeID']} ({node['NodeManagerAddress']}) does not see {private}" in problem
    assert "cannot read the token file" in problem
    assert list(private.iterdir()) == []  # the token went to the driver's tmpfs, never to the shared directory


def test_trainer_store_port_is_taken_before_it_is_published(ray_session):
    """Rank 0 opens the process group's TCP store itself, so the port it hands to the other ranks is already
    bound: nothing else on the node can take it between the pick and the group forming (a busy node used to see
    EADDRINUSE when the port was only picked, released and bound again later)."""
    import socket

    import ray

    from east_ds.training.actors import TrainRank

    rank0 = TrainRank.options(num_cpus=0).remote(0, 2, 0)
    try:
        addr, port = ray.get(rank0.open_store.remote())
        with socket.socket() as s, pytest.raises(OSError, match="in use"):
            s.bind((addr, port))
    finally:
        ray.kill(rank0)


@pytest.mark.slow
@pytest.mark.cluster
def test_what_cannot_be_scheduled_times_out_and_is_given_back(ray_session, tmp_path):
    """Trainer ranks as plain actors, trainer ranks in a placement group of their own, and the engines' placement
    group, each asking for GPUs this Ray does not have: SchedulingTimeout naming the ask and what is free, and
    whatever was started is given back, as Ray's own state says (its placement-group table and free
    resources), not after a wait of some length."""
    from ray.util.placement_group import placement_group_table

    from east_ds.cluster.placement import SchedulingTimeout
    from east_ds.config import ModelConfig
    from east_ds.rollout.engine_pool import EnginePool
    from east_ds.data.tiny import build_tiny_model
    from east_ds.training.actors import TrainerGroup

    model = build_tiny_model(tmp_path / "tiny")
    before, groups_before = free_resources(), set(placement_group_table())
    train = TrainConfig(global_batch_size=2, micro_batch_size=1, gradient_accumulation_steps=1)
    free = r"the cluster has free: CPU \d+\. "
    with pytest.raises(SchedulingTimeout, match=r"^trainer ranks not scheduled within 2 s: asked for 2 x "
                                                r"\{CPU: 1, GPU: 1\} \(in all GPU 2, CPU 2\); " + free):
        TrainerGroup("unused", train, ModelConfig(), 2, num_gpus_per_rank=1, schedule_timeout_s=2)
    split = Need("trainer ranks", [{"GPU": 1.0, "CPU": 1.0}] * 2, "PACK")
    with pytest.raises(SchedulingTimeout, match=r"^trainer ranks not scheduled within 2 s: asked for 2 bundles of "
                                                r"\{GPU: 1, CPU: 1\}, PACK \(in all GPU 2, CPU 2\); " + free):
        TrainerGroup("unused", train, ModelConfig(), 2, num_gpus_per_rank=1, need=split, schedule_timeout_s=2)
    engines = Need("rollout engines", [{"GPU": 1.0, "CPU": 1.0}] * 4, "PACK")
    with pytest.raises(SchedulingTimeout, match=r"^rollout engines not scheduled within 2 s: asked for 4 bundles "
                                                r"of \{GPU: 1, CPU: 1\}, PACK \(in all GPU 4, CPU 4\); " + free):
        EnginePool(str(model), RolloutConfig(), ModelConfig(), need=engines, schedule_timeout_s=2)
    groups = {k: v["state"] for k, v in placement_group_table().items() if k not in groups_before}
    assert sorted(groups.values()) == ["REMOVED", "REMOVED"]  # the ranks' own group and the engines'
    assert free_resources() == before  # nothing asked for could be scheduled, so nothing was ever held
