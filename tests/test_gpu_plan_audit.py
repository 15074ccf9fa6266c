"""The second GPU audit's placement findings, pinned on a CPU machine (marker `gpu_plan`).

Which placement-group bundles, and so which vLLM tensor-parallel workers, land on which node. Each test's
docstring names the upstream line (Ray 2.60 and vLLM 0.32.0 as installed, paths relative to site-packages, or
how OpenRLHF does the same) that makes the pinned output right. docs/gpu.md lists the findings.
"""

from __future__ import annotations

import pytest

from east_ds.cluster import device_plan as plan
from east_ds.config import RunConfig, load_config

pytestmark = pytest.mark.gpu_plan

# A PACK placement group of 16 one-GPU bundles on two 8-GPU nodes, as ray-project/ray#51117 reports it: every
# node holds 8 bundles, but the indices are not grouped by node ([a, b x 7, b, a x 7] in the words).
SCATTERED = {0: "a", **{i: "b" for i in range(1, 8)}, 8: "b", **{i: "a" for i in range(9, 16)}}


def test_engine_bundles_keep_each_engines_workers_on_one_node():
    """ray/llm/_internal/serve/utils/pg_utils.py:39-68 (Ray 2.60): "adjacent bundle indices don't necessarily map
    to the same physical node", so Ray's own LLM serving regroups the bundles by node before handing them to
    vLLM; vllm/v1/executor/ray_executor_v2.py:306-312 puts worker k on the k-th VLLM_RAY_BUNDLE_INDICES entry
    wherever that bundle is; OpenRLHF's trainer/ray/utils.py get_bundle_indices groups by node for the same
    reason. With consecutive indices (engine_actor_plan's e*tp..) every engine here would span both nodes."""
    naive = [list(range(e * 8, (e + 1) * 8)) for e in range(2)]
    assert plan.engines_across_nodes(naive, SCATTERED) == [0, 1]
    got = plan.engine_bundles(SCATTERED, num_engines=2, tensor_parallel_size=8)
    assert got == [[0, *range(9, 16)], list(range(1, 9))]
    assert plan.engines_across_nodes(got, SCATTERED) == []
    four = plan.engine_bundles(SCATTERED, num_engines=4, tensor_parallel_size=4)
    assert plan.engines_across_nodes(four, SCATTERED) == []
    assert sorted(b for e in four for b in e) == list(range(16))  # every bundle used once


def test_engine_bundles_with_one_gpu_per_engine_are_unchanged():
    """TP 1: vLLM runs the worker in the engine itself (uniproc), nothing spans nodes; colocated trainer rank r
    keeps sitting beside engine r on bundle r (placement.placement_needs)."""
    assert plan.engine_bundles(SCATTERED, num_engines=3, tensor_parallel_size=1) == [[0], [1], [2]]


def test_engines_that_must_span_nodes_come_last_and_are_named():
    """PACK is best effort (Ray's placement-group docs: bundles go to other nodes when one cannot hold them); 3
    free GPUs on one node and 5 on another cannot hold four TP-2 engines on single nodes. vLLM then only warns
    (vllm/v1/executor/ray_utils.py:319-336, _verify_bundles); east_ds names the engine."""
    nodes = {0: "a", 1: "b", 2: "a", 3: "b", 4: "b", 5: "a", 6: "b", 7: "b"}
    got = plan.engine_bundles(nodes, num_engines=4, tensor_parallel_size=2)
    assert got[:3] == [[0, 2], [1, 3], [4, 6]]
    assert plan.engines_across_nodes(got, nodes) == [3]
    assert sorted(got[3]) == [5, 7]


def test_engine_bundles_need_a_bundle_per_worker():
    """vllm/v1/executor/ray_utils.py:356-372 asserts len(VLLM_RAY_BUNDLE_INDICES) == world size; east_ds says
    which numbers disagree before vLLM starts."""
    with pytest.raises(ValueError, match="need 8 bundles; the placement group has 6"):
        plan.engine_bundles({i: "a" for i in range(6)}, num_engines=2, tensor_parallel_size=4)


def test_tp_node_shortfall_counts_whole_engines_per_node():
    """vllm/v1/executor/ray_utils.py:319-336 warns when a node holds fewer bundles than tensor_parallel_size;
    the total GPU count (placement.shortfall) cannot see it: two 4-GPU nodes have the 8 GPUs a TP-8 engine
    asks for, but not on one node."""
    assert plan.tp_node_shortfall({"a": 8, "b": 8}, num_engines=2, tensor_parallel_size=8) == ""
    assert plan.tp_node_shortfall({"a": 8, "b": 8}, num_engines=4, tensor_parallel_size=4) == ""
    assert plan.tp_node_shortfall({"a": 4, "b": 4}, num_engines=3, tensor_parallel_size=1) == ""
    msg = plan.tp_node_shortfall({"a": 4, "b": 4}, num_engines=1, tensor_parallel_size=8)
    assert "hold 0 whole engine(s) of 1" in msg and "(4, 4)" in msg
    assert "1 would run tensor parallel across nodes" in plan.tp_node_shortfall(
        {"a": 6, "b": 6}, num_engines=3, tensor_parallel_size=4)


def test_placement_warns_when_no_node_holds_a_whole_engine():
    """cluster.Placement.tp_node_warning applies tp_node_shortfall to the run's engines on a cluster with GPUs
    (check_resources prints it); no warning without GPUs (vLLM-CPU runs TP workers as processes of its actor)."""
    cfg = load_config(None, ["placement.mode=split", "rollout.num_engines=2", "rollout.tensor_parallel_size=4"])
    from east_ds.cluster.placement import Placement

    assert Placement.of(cfg, gpus=8).tp_node_warning({"a": 4, "b": 4}) == ""
    assert "would run tensor parallel across nodes" in Placement.of(cfg, gpus=8).tp_node_warning({"a": 2, "b": 6})
    assert Placement.of(cfg, gpus=0).tp_node_warning({"a": 2, "b": 6}) == ""
    assert Placement.of(RunConfig(), gpus=2).tp_node_warning({"a": 1, "b": 1}) == ""  # TP 1


def test_engine_actor_uses_the_bundles_it_was_given():
    """The pool passes each engine its engine_bundles (EnginePool._assign_bundles); vLLM's Ray executor puts TP
    worker k on the k-th index of VLLM_RAY_BUNDLE_INDICES (vllm/v1/executor/ray_executor.py:185-194 parses it,
    in order, into the bundles its workers are scheduled on), and the engine actor sits on the first, so the
    workers land on the node the assignment chose."""
    p = plan.engine_actor_plan(1, 2, True, 0.5, {}, bundles=[4, 6])
    assert p.bundle_index == 4 and p.env["VLLM_RAY_BUNDLE_INDICES"] == "4,6"
    assert plan.engine_actor_plan(1, 2, True, 0.5, {}).env["VLLM_RAY_BUNDLE_INDICES"] == "2,3"  # the default
    assert plan.engine_actor_plan(3, 1, True, 1.0, {}, bundles=[7]).bundle_index == 7
    with pytest.raises(ValueError, match="1 bundles for tensor_parallel_size 2"):
        plan.engine_actor_plan(0, 2, True, 0.5, {}, bundles=[0])


def test_an_engine_core_process_joins_the_actors_own_ray_cluster():
    """Audit A3. With TP > 1 the engine core calls initialize_ray_cluster, which does ray.init(address=None)
    when Ray is not initialised in that process (vllm/v1/executor/ray_utils.py:553-570); vLLM sets RAY_ADDRESS
    for the spawned engine core only in _maybe_force_spawn, which returns early when VLLM_WORKER_MULTIPROC_METHOD
    is already "spawn" (vllm/utils/system_utils.py:122-136). Inside an actor of a local ray.init() cluster there
    is no address file to find, so a second Ray would start. OpenRLHF sets RAY_ADDRESS in its engine actor
    (openrlhf/trainer/ray/vllm_engine.py:102-105); so does east_ds, unless the environment has one."""
    env = plan.engine_process_env(True, {}, "10.0.0.1:6379")
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "RAY_ADDRESS": "10.0.0.1:6379"}
    assert "RAY_ADDRESS" not in plan.engine_process_env(True, {"RAY_ADDRESS": "auto"}, "10.0.0.1:6379")
    assert "RAY_ADDRESS" not in plan.engine_process_env(False, {}, "10.0.0.1:6379")  # CPU: no Ray executor


def test_a_tp1_engine_builds_on_the_gpu_ray_assigned_when_ray_leaves_devices_visible():
    """With RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES Ray does not narrow CUDA_VISIBLE_DEVICES per actor
    (ray/_private/accelerators/nvidia_gpu.py:109-117), so every TP 1 engine of a node would take cuda:0; OpenRLHF
    sets CUDA_VISIBLE_DEVICES to the assigned id in its engine actor (openrlhf/trainer/ray/vllm_engine.py:79-83).
    TP > 1: vLLM's Ray executor gives its own workers their devices (vllm/v1/executor/ray_executor_v2.py:265)."""
    noset = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    assert plan.engine_visible_devices(noset, ["5"], 1) == {"CUDA_VISIBLE_DEVICES": "5"}
    assert plan.engine_visible_devices({**noset, "CUDA_VISIBLE_DEVICES": "3,5,6"}, ["5"], 1) == {
        "CUDA_VISIBLE_DEVICES": "5"}
    assert plan.engine_visible_devices(noset, ["5"], 2) == {}
    assert plan.engine_visible_devices({"CUDA_VISIBLE_DEVICES": "0"}, ["0"], 1) == {}  # Ray narrowed it
    assert plan.engine_visible_devices(noset, [], 1) == {}  # a CPU engine
