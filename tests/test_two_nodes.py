"""Two Ray nodes in two network namespaces (tests/netns.py), token authentication on: `launch/ray_job.sh` runs
`east-ds run` with the rollout engines on node b and the trainer on node a (custom node resources); node b is
lost during rollout, the driver fails naming it; node b comes back and the same command finishes the run, with
every output present once.

Node a is the head (GCS, dashboard and job API on its own loopback, the job's driver); node b is a worker. Each
is `launch/ray_head.sh ... --block` inside its namespace (netns.RayCluster).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from netns import RayCluster, two_hosts  # noqa: F401  (two_hosts: a fixture)
from test_driver import PHASE_FILES, _write_config

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_two_node_run_loses_a_node_and_resumes(two_hosts, warm_model, tmp_path):  # noqa: F811
    hosts = two_hosts
    cfg_path = _write_config(tmp_path, warm_model, "two_nodes")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["rollout"]["shard_size"] = 1  # 24 shards: the node is lost with most of them still to do
    cfg["placement"] = {"mode": "split", "engine_resources": {"node_b": 1}, "trainer_resources": {"node_a": 1}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    shards = run_dir / "iter_1" / "shards"

    ray = RayCluster(hosts, tmp_path, {"a": {"node_a": 8}, "b": {"node_b": 8}})
    node_b = ray.node_ids()[hosts.addr["b"]]
    first = ray.submit(cfg_path, "east-two-nodes-1", tmp_path / "job1.log")
    deadline = time.monotonic() + 600
    while not any(shards.glob("shard_*.parquet")):  # rollout of iteration 1 is under way
        assert first.poll() is None, (tmp_path / "job1.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no rollout shard after 600 s"
        time.sleep(0.05)
    hosts.kill_all("b")  # node b (its raylet, the engine actor, vLLM) is gone at once
    assert first.wait(timeout=600) != 0
    log1 = (tmp_path / "job1.log").read_text()
    assert f"rollout engines on {hosts.addr['b']}" in log1  # the engines were on node b
    lost = f"east-ds run: error: engine 0 was lost with its Ray node {node_b} ({hosts.addr['b']})"
    assert lost in log1, log1[-4000:]
    done_before = sorted(p.name for p in shards.glob("shard_*.parquet"))
    assert 0 < len(done_before) < 24, "the rollout finished before node b was lost; the test needs a longer one"
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard_*.parquet")}

    ray.worker = ray.start("b")  # node b returns (same address, same resources, a new node id)
    ray.wait_nodes(2)
    second = ray.submit(cfg_path, "east-two-nodes-2", tmp_path / "job2.log")
    assert second.wait(timeout=900) == 0, (tmp_path / "job2.log").read_text()[-4000:]

    # every output present once
    for k in (1, 2):
        it = run_dir / f"iter_{k}"
        for f in PHASE_FILES:
            assert (it / f).is_file(), f"iter_{k}/{f} missing"
        assert (it / "checkpoint" / "config.json").is_file()
        r = pd.read_parquet(it / "rollouts.parquet")
        assert len(r) == 24 * 4 and not r.duplicated(["question_id", "sample_index"]).any()
        steps = [json.loads(x)["step"] for x in (it / "train" / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1))
    stats = json.loads((run_dir / "iter_1" / "rollout_stats.json").read_text())
    assert stats["shards_reused"] == len(done_before) and stats["shards_generated"] == 24 - len(done_before)
    assert {n: (shards / n).stat().st_mtime_ns for n in mtimes} == mtimes  # finished shards were not redone
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1, 2]
    # where things ran: the engines on node b, the trainer ranks on node a
    assert f"rollout engines on {hosts.addr['b']}" in (tmp_path / "job2.log").read_text()
    actors = hosts.run("a", ["ray", "list", "actors", "--address", ray.job_api, "--filter", "class_name=TrainRank",
                             "--detail", "--format", "json", "--limit", "100"], env=ray.env, timeout=120)
    nodes = hosts.run("a", ["ray", "list", "nodes", "--address", ray.job_api, "--format", "json"], env=ray.env,
                      timeout=120)
    ip_of = {n["node_id"]: n["node_ip"] for n in json.loads(nodes.stdout)}
    ranks = json.loads(actors.stdout)
    assert ranks and {ip_of[a["node_id"]] for a in ranks} == {hosts.addr["a"]}
