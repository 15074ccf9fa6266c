"""What east_ds decides for GPUs, pinned on a CPU machine (marker `gpu_plan`).

Each test checks the GPU-case output of one function of east_ds/cluster/device_plan.py (or the code that applies it), and
its docstring names the upstream line that makes that output right: vLLM 0.32.0, Ray 2.60, DeepSpeed 0.19.8 as
installed (paths relative to site-packages), or how OpenRLHF and TRL do the same. docs/gpu.md maps each to its
GPU path and to what only a real GPU can still show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from east_ds.cluster import device_plan as plan
pytestmark = pytest.mark.gpu_plan


def test_broadcast_communicator_device_is_indexed():
    """vllm/distributed/device_communicators/pynccl.py:165-191 stores the device it is given and warms up with
    `torch.zeros(1, device=device)`; the collectives assert `tensor.device == self.device` (lines 280, 541).
    A bare "cuda" is not equal to the "cuda:0" every CUDA tensor reports, so rank 0 must pass an indexed device,
    as OpenRLHF (`torch.cuda.current_device()`) and TRL (`device=torch.cuda.current_device()`) do."""
    assert torch.device("cuda") != torch.device("cuda:0")  # the trap itself
    assert plan.communicator_device(True, 0) == "cuda:0"
    assert torch.device(plan.communicator_device(True, 0)) == torch.device("cuda:0")
    assert plan.communicator_device(True, 3) == "cuda:3"
    assert plan.communicator_device(False) == "cpu"


def test_trainer_broadcaster_builds_its_end_on_the_indexed_device(monkeypatch):
    """The trainer's end (weight_sync.TrainerWeightBroadcaster) asks device_plan for its device on a CUDA
    machine; here CUDA is pretended and the communicator replaced by a recorder (pynccl line 280 as above)."""
    from east_ds.cluster import weight_sync
    seen = {}

    class Recorder:
        def __init__(self, host, port, rank, world_size, device, listen_socket=None):
            seen.update(rank=rank, device=device)

    monkeypatch.setattr(weight_sync, "WeightBroadcast", Recorder)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    weight_sync.TrainerWeightBroadcaster("127.0.0.1", 1, 2)
    assert seen == {"rank": 0, "device": "cuda:1"}


@pytest.mark.parametrize("share, per_worker", [(0.5, "0.5"), (1.0, "1")])
def test_tp_engine_actor_leaves_gpus_to_its_workers(share, per_worker):
    """vllm/v1/executor/ray_executor_v2.py:276-283 starts each TP worker with num_gpus=VLLM_RAY_PER_WORKER_GPUS
    (envs.py:1504, default 1.0) and num_cpus=0 (line 386), on the bundles VLLM_RAY_BUNDLE_INDICES names (lines
    307-312). Colocated, a worker asking for a whole GPU leaves no room for the trainer rank's half on the same
    bundle, so the share is passed down, as OpenRLHF's LLMRayActor sets VLLM_RAY_PER_WORKER_GPUS to its
    fractional num_gpus. ray/_private/utils.py:284-292 leaves CUDA_VISIBLE_DEVICES alone for an actor holding no
    GPU unless RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO is set, so the zero-GPU engine actor pins it off."""
    p = plan.engine_actor_plan(1, 2, gpu_bundles=True, gpu_share=share, env={})
    assert (p.num_cpus, p.num_gpus, p.bundle_index) == (0, 0, 2)
    assert p.env["VLLM_RAY_BUNDLE_INDICES"] == "2,3"
    assert p.env["VLLM_RAY_PER_WORKER_GPUS"] == per_worker
    assert p.env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "0"


def test_tp1_engine_actor_takes_its_share_of_one_bundle():
    """TP 1 runs vLLM's worker in the actor itself (uniproc executor), so the actor holds the GPU share."""
    p = plan.engine_actor_plan(3, 1, gpu_bundles=True, gpu_share=0.5, env={})
    assert (p.num_cpus, p.num_gpus, p.bundle_index) == (1, 0.5, 3)
    assert "VLLM_RAY_PER_WORKER_GPUS" not in p.env
    cpu = plan.engine_actor_plan(3, 2, gpu_bundles=False, gpu_share=1.0, env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert (cpu.num_cpus, cpu.num_gpus, cpu.bundle_index, cpu.env["VLLM_CPU_KVCACHE_SPACE"]) == (1, 0, None, "2")


COLOCATED_TP2 = textwrap.dedent("""
    import json, time, ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In
    from east_ds.cluster.placement import SHARE, placement_needs
    from east_ds.config import PlacementConfig, RolloutConfig, TrainConfig
    from east_ds.cluster.device_plan import engine_actor_plan

    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False, _node_ip_address="127.0.0.1")

    @ray.remote
    class Probe:
        def ok(self):
            return ray.get_runtime_context().get_assigned_resources()

    def gpu_free(pg, bundle):  # Ray's own count of the GPU still free on one bundle of the group
        return ray.available_resources().get(f"GPU_group_{bundle}_{pg.id.hex()}", 0.0)

    def schedule(per_worker_override):  # "": what east_ds sets; else what vLLM's TP workers ask for instead
        engines, tp, ranks = 2, 2, 4
        [need] = placement_needs(RolloutConfig(num_engines=engines, tensor_parallel_size=tp),
                                 TrainConfig(num_ranks=ranks), PlacementConfig(mode="colocated"), 4)
        pg = placement_group(need.bundles, strategy=need.strategy)
        ray.get(pg.ready())
        engine_side, workers, held = [], {}, [0.0] * len(need.bundles)
        for e in range(engines):
            p = engine_actor_plan(e, tp, True, SHARE, {})
            engine_side.append(Probe.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus,
                                             scheduling_strategy=In(pg, p.bundle_index)).remote())
            held[p.bundle_index] += p.num_gpus
            per = float(per_worker_override or p.env["VLLM_RAY_PER_WORKER_GPUS"])
            for b in map(int, p.env["VLLM_RAY_BUNDLE_INDICES"].split(",")):  # vLLM's TP workers, as it asks
                workers[b] = Probe.options(num_cpus=0, num_gpus=per, scheduling_strategy=In(pg, b)).remote()
                engine_side.append(workers[b])
                held[b] += per
        ray.get([a.ok.remote() for a in engine_side])  # the engine side is alive (it fits either way)
        while any(abs(gpu_free(pg, b) - (1.0 - held[b])) > 1e-9 for b in range(ranks)):
            time.sleep(0.1)  # Ray's resource view catches up with what the alive actors hold
        room = [gpu_free(pg, r) >= SHARE - 1e-9 for r in range(ranks)]  # what Ray has left for trainer rank r
        trainer = [Probe.options(num_cpus=1, num_gpus=SHARE, scheduling_strategy=In(pg, r)).remote()
                   for r in range(ranks)]
        calls = [a.ok.remote() for a in trainer]
        ray.get([c for c, fits in zip(calls, room) if fits])  # the ranks with room are alive
        waiting = [c for c, fits in zip(calls, room) if not fits]
        pending = len(ray.wait(waiting, num_returns=len(waiting), timeout=0)[1]) if waiting else 0
        for r, fits in enumerate(room):  # a waiting rank waits for GPU only: it starts once its bundle's TP
            if not fits:                 # worker is gone
                ray.kill(workers[r])
        started = len(ray.get(waiting))
        for a in engine_side + trainer:
            ray.kill(a)
        remove_placement_group(pg)
        return {"scheduled": len(engine_side) + sum(room), "waiting": len(waiting), "pending": pending,
                "started_once_freed": started}

    print(json.dumps([schedule(""), schedule("1.0")]))
""")


@pytest.mark.slow
@pytest.mark.cluster
def test_colocated_tp2_trainer_ranks_fit_beside_vllm_workers(tmp_path):
    """Real Ray, 4 logical GPUs: 2 engines x TP 2 colocated with 4 trainer ranks. Every actor asks for exactly
    what east_ds and vLLM's Ray executor would (ray_executor_v2.py:276-283, 386; the driver's trainer ranks:
    num_cpus 1, num_gpus 0.5 on bundle r). With the share every actor is scheduled; with vLLM's default
    VLLM_RAY_PER_WORKER_GPUS=1.0 the 4 trainer ranks wait (the finding this pins). vLLM-CPU has no Ray executor,
    so plain actors stand in for its workers.

    "Waiting" is decided from Ray's own state, never from a clock: once the engine side is alive and Ray's
    resource view shows what it holds, a trainer rank waits when its bundle's free GPU
    (`ray.available_resources()["GPU_group_<bundle>_<pg>"]`) is below its share; such a rank is still pending,
    and it starts as soon as the TP worker on its bundle is killed (so it waited for GPU, nothing else). The
    subprocess timeout only stops a hang."""
    import os

    out = subprocess.run([sys.executable, "-c", COLOCATED_TP2], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    with_share, vllm_default = json.loads(out.stdout.strip().splitlines()[-1])
    assert with_share == {"scheduled": 10, "waiting": 0, "pending": 0, "started_once_freed": 0}
    assert vllm_default == {"scheduled": 6, "waiting": 4, "pending": 4, "started_once_freed": 4}


def test_rollout_defaults_by_device_and_placement():
    """vllm/config/cache.py:102: vLLM's own gpu_memory_utilization default is 0.92 (split: the engine owns the
    GPU); verl's rollout config uses 0.5 when the trainer shares the GPU. CUDA graphs stay on for GPUs (vLLM 0.32
    sleeps and reloads with graphs captured). A seed per request makes vLLM sample those requests one by one
    (on vLLM-CPU, 0.5M model, 256 prompts x 16 samples x 64 tokens, unseeded generation ran at 1.02-1.12x the
    seeded rate), so GPUs default to unseeded; CPU keeps the reproducible default."""
    gpu_split = plan.rollout_defaults(on_gpu=True, colocated=False)
    assert gpu_split == plan.RolloutDefaults(enforce_eager=False, gpu_memory_utilization=0.92,
                                             seed_per_request=False)
    assert plan.rollout_defaults(on_gpu=True, colocated=True).gpu_memory_utilization == 0.5
    assert plan.rollout_defaults(on_gpu=False, colocated=False) == plan.RolloutDefaults(True, 0.92, True)
    kept = plan.rollout_defaults(True, True, enforce_eager=True, gpu_memory_utilization=0.7, seed_per_request=True)
    assert kept == plan.RolloutDefaults(True, 0.7, True)


def test_engine_arguments_on_gpu_are_valid_vllm_arguments():
    """GPU: TP workers on Ray (`distributed_executor_backend="ray"`, vllm/v1/executor/abstract.py:77-85 picks
    RayExecutorV2), sleep mode when asked, and the worker extension that east_ds calls by name
    (vllm/v1/worker/worker_base.py:296-310 mixes `worker_extension_cls` into the worker). vLLM's own EngineArgs
    has a field for every key (`vllm.LLM` passes its keyword arguments to it; a misspelt one would fail there)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    gpu = plan.engine_kwargs("m", 1, "bfloat16", 2048, 2, True, False, on_gpu=True, enforce_eager=False,
                             gpu_memory_utilization=0.92, enable_sleep=True)
    assert gpu["distributed_executor_backend"] == "ray" and gpu["enable_sleep_mode"] is True
    assert gpu["enforce_eager"] is False and gpu["gpu_memory_utilization"] == 0.92
    assert gpu["worker_extension_cls"] == "east_ds.rollout.vllm_engine.EastWorkerExtension"
    assert "enable_chunked_prefill" not in gpu  # a CPU-only workaround stays off GPUs
    cpu = plan.engine_kwargs("m", 1, "bfloat16", 2048, 2, True, False, on_gpu=False, enforce_eager=True,
                             gpu_memory_utilization=0.92, enable_sleep=False)
    assert cpu["distributed_executor_backend"] == "mp" and cpu["enable_chunked_prefill"] is False
    assert "enable_sleep_mode" not in cpu and "gpu_memory_utilization" not in cpu
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert not (set(gpu) | set(cpu)) - fields


def test_worker_extension_resolves_without_clashing_with_vllm_workers():
    """worker_base.py:296-310 asserts that no extension attribute already exists on the worker class; the GPU
    worker (vllm/v1/worker/gpu_worker.py) and the CPU worker must both accept east_ds's."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    ext = resolve_obj_by_qualname(plan.WORKER_EXTENSION)
    methods = [a for a in vars(ext) if a.startswith("east_")]
    assert {"east_reload_from_refs", "east_init_weight_group", "east_reload_from_broadcast"} <= set(methods)
    for cls in (Worker, CPUWorker):
        assert not [a for a in methods if hasattr(cls, a)]


def test_engine_core_out_of_process_on_gpu_needs_methods_by_name(monkeypatch):
    """GPU engines run the engine core in its own process (VLLM_ENABLE_V1_MULTIPROCESSING=1, vLLM's default).
    vllm/v1/serial_utils.py:213-225 then refuses to send a callable (or a Ray ObjectRef) to it unless
    VLLM_ALLOW_INSECURE_SERIALIZATION=1, so east_ds calls worker methods by name and fetches weight refs in the
    actor (refs_fetched_in_actor)."""
    from vllm.v1.serial_utils import MsgpackEncoder

    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    with pytest.raises(TypeError, match="INSECURE_SERIALIZATION"):
        MsgpackEncoder().encode(("collective_rpc", test_broadcast_communicator_device_is_indexed))
    MsgpackEncoder().encode(("collective_rpc", "east_reload_from_broadcast", [[["w", "bfloat16", [2, 2]]]]))
    assert plan.engine_process_env(True, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}) == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert plan.engine_process_env(False, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}) == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _across_engine_core(args):
    """`args` as a worker receives them from an engine core in its own process: encoded by the client's
    MsgpackEncoder and decoded by the engine core's untyped generic decoder (vllm/v1/engine/core.py:1840-1843,
    `generic_decoder = MsgpackDecoder(...)`, used for UTILITY requests at core.py:1912-1915), as collective_rpc's
    arguments travel."""
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    return MsgpackDecoder().decode(MsgpackEncoder().encode(args))


def test_a_tensor_in_collective_rpc_does_not_survive_the_engine_core_boundary():
    """Why object-store buckets cannot ride on collective_rpc once the engine core has its own process (GPUs):
    vllm/v1/serial_utils.py:256-272 encodes a tensor as (dtype, shape, buffer index), and only a typed decoder
    (dec_hook, serial_utils.py:349-356) turns it back into a tensor; the engine core's decoder is untyped, so
    the worker would get a list. vllm/entrypoints/llm.py's collective_rpc docstring: for control messages."""
    import torch

    arrived = _across_engine_core(("reload_weights", [("w", torch.ones(64, 64))]))
    assert not isinstance(arrived[1][0][1], torch.Tensor)


def test_bucket_files_cross_the_engine_core_boundary_intact(tmp_path):
    """What east_ds sends instead (vllm_engine.LLMEngine.update_weights_from_refs when refs_fetched_in_actor):
    the buckets as safetensors files, and only their paths in the RPC. Decoded as the engine core decodes it,
    then read as the worker reads it (EastWorkerExtension.east_reload_from_files), every tensor comes back with
    its name, dtype, shape and values, tied (shared-storage) tensors included."""
    import torch

    from east_ds.cluster.weight_sync import read_bucket_files, write_bucket_files

    emb = torch.randn(32, 8, dtype=torch.bfloat16)
    buckets = [[("embed", emb), ("lm_head", emb)], [("norm", torch.ones(8)), ("step", torch.tensor(3))]]
    paths = write_bucket_files(buckets, tmp_path)
    method, (arrived,) = _across_engine_core(("east_reload_from_files", (paths,)))
    assert method == "east_reload_from_files" and arrived == paths
    got = list(read_bucket_files(arrived))
    sent = [item for b in buckets for item in b]
    assert [n for n, _ in got] == [n for n, _ in sent]
    for (_, a), (_, b) in zip(got, sent):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_object_store_handoff_goes_to_dev_shm_only_when_it_has_room():
    """Docker's default /dev/shm is 64 MiB (docs.docker.com, `docker run --shm-size`, default 64m), far less
    than a model; a full tmpfs fails the write half-way (ENOSPC). NCCL also keeps its own segments there
    (NCCL docs, "Troubleshooting: Docker ... shared memory"), hence the margin."""
    mib = 2**20
    assert plan.weight_handoff_dir(500 * mib, 2048 * mib, "/tmp") == "/dev/shm"
    assert plan.weight_handoff_dir(500 * mib, 64 * mib, "/tmp") == "/tmp"
    assert plan.weight_handoff_dir(500 * mib, 500 * mib, "/tmp") == "/tmp"  # no margin left
    assert plan.weight_handoff_dir(1, None, "/var/tmp") == "/var/tmp"  # no /dev/shm


def test_broadcast_waits_for_the_device_before_its_communicator_ends(monkeypatch):
    """PyNcclCommunicator.broadcast only enqueues ncclBroadcast on the stream
    (vllm/distributed/device_communicators/pynccl.py:538-562); vLLM's own NCCL weight transfer synchronizes the
    current stream before returning (vllm/distributed/weight_transfer/nccl_engine.py:440-456). east_ds's end of
    the group does the same before its barrier and before destroy() (an abort of anything still queued). Run
    here with recorders in place of the communicator, the group and the CUDA stream."""
    import torch

    from east_ds.cluster.weight_sync import WeightBroadcast

    assert plan.broadcast_finish_steps(nccl=True) == ("synchronize stream", "barrier", "destroy communicator")
    assert plan.broadcast_finish_steps(nccl=False) == ("barrier",)
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, method):
            return lambda *a, **k: calls.append(f"{self.name}.{method}")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Recorder("stream"))
    end = object.__new__(WeightBroadcast)  # the finishing sequence alone, without CUDA or a peer
    end.device, end.group, end.comm = torch.device("cuda:0"), Recorder("group"), Recorder("nccl")
    end.finish()
    assert calls == ["stream.synchronize", "group.barrier", "nccl.destroy"]
    assert end.comm is None


def test_object_store_refs_are_fetched_where_ray_can_resolve_them():
    """With TP > 1 on GPUs the RPC reaches vLLM's Ray workers through its own pickled MessageQueue
    (ray_executor_v2.py, step 3 "Create broadcast MessageQueue"), not as Ray task arguments, so an ObjectRef
    inside would arrive without its owner; out of process, msgpack refuses it (serial_utils.py:213-225). Only a
    TP 1 worker in the actor's own process pulls the refs itself; otherwise the actor fetches them into bucket
    files (test_bucket_files_cross_the_engine_core_boundary_intact)."""
    assert plan.refs_fetched_in_actor(2, engine_core_in_process=True)
    assert plan.refs_fetched_in_actor(2, engine_core_in_process=False)
    assert plan.refs_fetched_in_actor(1, engine_core_in_process=False)
    assert not plan.refs_fetched_in_actor(1, engine_core_in_process=True)


def test_sleep_level_and_wake_order():
    """vllm/entrypoints/llm.py:836-885: level 2 discards weights and KV cache ("good for ... update the model");
    level 1 copies the weights to host memory. vllm/v1/engine/core.py:997-1019: a partial wake_up(tags) keeps
    scheduling paused until every allocation is back; vllm/v1/worker/gpu_worker.py:294-346 restores level 2's
    saved buffers when the weights wake. TRL's colocate mode and OpenRLHF empty the trainer's cache, wake the
    weights, load them, then wake the KV cache."""
    p = plan.sleep_plan(reload_after_wake=True)
    assert p.level == 2
    assert p.wake_order == ("release trainer memory", "wake weights", "update weights", "wake kv_cache")
    assert plan.sleep_plan(reload_after_wake=False).level == 1


def test_colocated_engines_wake_around_an_update_in_the_planned_order():
    """cluster.placement.wake_around (the smoke check and bench) follows sleep_plan's order around the weight
    update; the driver takes the same steps as phases of its loop (test_driver_logic.py checks their order)."""
    from east_ds.config import RunConfig
    from east_ds.cluster.placement import Placement, sleep_for_training, wake_around

    calls = []

    class Pool:
        def sleep(self):
            calls.append("sleep")

        def wake(self, tags=None):
            calls.append(f"wake {tags}")

    asleep = sleep_for_training(Pool(), Placement.of(RunConfig(), gpus=2))  # colocated by default
    wake_around(Pool(), asleep, lambda: calls.append("update"))
    assert calls == ["sleep", "wake ['weights']", "update", "wake ['kv_cache']"]
    assert plan.sleep_plan().wake_order[1:] == ("wake weights", "update weights", "wake kv_cache")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_gradients_accumulate_in_fp32_under_zero(stage):
    """deepspeed/runtime/engine.py:1799-1810 takes the accumulation dtype from data_types.grad_accum_dtype,
    defaulting to the model dtype; ZeRO 1-2 allocate their accumulation buffers in it
    (runtime/zero/stage_1_and_2.py:395-404, 1040-1051), ZeRO 3 too (stage3.py:239, 792), and bf16 + fp32 at stage 1
    selects the BF16 optimizer (engine.py:2305-2310). DeepSpeed's own parser reads the section back as fp32."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from east_ds.config import ModelConfig, TrainConfig
    from east_ds.training.engine import build_ds_config

    sections = plan.precision_sections("bfloat16", stage)
    assert sections["data_types"] == {"grad_accum_dtype": "fp32"} and sections["bf16"] == {"enabled": True}
    ds = build_ds_config(TrainConfig(deepspeed_config=f"ds_configs/zero{stage}.json"), ModelConfig(), 1)
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert DeepSpeedConfig(ds).grad_accum_dtype == "fp32"


def test_precision_without_zero_or_in_16_bit_float():
    """engine.py:2313-2323: without ZeRO, bf16 with fp32 accumulation is an "unsupported mix", so stage 0 keeps
    DeepSpeed's default; fp16 gets a loss scale; fp32 needs nothing."""
    assert "data_types" not in plan.precision_sections("bfloat16", 0)
    fp16 = plan.precision_sections("float16", 2)
    assert fp16["fp16"] == {"enabled": True, "initial_scale_power": 16} and "data_types" not in fp16
    assert plan.precision_sections("float32", 2) == {"bf16": {"enabled": False}, "fp16": {"enabled": False}}


def test_actor_environment_keeps_node_values_and_secrets_home():
    """vllm/v1/executor/ray_utils.py:31-41 refuses to copy VLLM_HOST_IP to other nodes' workers (a wrong host IP
    fails a multi-node engine); deepspeed/accelerator/real_accelerator.py:59-60 obeys DS_ACCELERATOR, so a driver's
    `cpu` would put GPU ranks on the CPU; ray/_private/worker.py:1789-1813 refuses a driver runtime_env that sets
    a key the job's runtime_env sets. Local runs ship the driver's settings (the raylet is the driver's child)."""
    driver = {"VLLM_HOST_IP": "10.0.0.1", "VLLM_USE_V1": "1", "DS_ACCELERATOR": "cpu", "HF_HOME": "/shared/hf",
              "HF_TOKEN": "secret", "TORCH_EXTENSIONS_DIR": "/home/me/.venv/x", "OMP_NUM_THREADS": "2",
              "PATH": "/usr/bin", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    joined = plan.actor_env(driver, joining_cluster=True)
    assert joined == {"VLLM_USE_V1": "1", "HF_HOME": "/shared/hf", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    local = plan.actor_env(driver, joining_cluster=False)
    assert local["DS_ACCELERATOR"] == "cpu" and local["OMP_NUM_THREADS"] == "2" and "HF_TOKEN" not in local
    assert "HF_HOME" not in plan.actor_env(driver, True, job_env={"HF_HOME": "/other"})


def test_nccl_and_gloo_network_settings_reach_actors_on_every_node():
    """NeMo-RL's init_ray (nemo_rl/distributed/virtual_cluster.py:306-310, NVIDIA-NeMo/RL 7ea279a) ships the
    driver's whole environment, NCCL_* included, to every worker on every node; OpenRLHF
    (openrlhf/cli/train_ppo_ray.py:21-32, 3c3be62) and verl (verl/trainer/constants_ppo.py:20-31, b178a3c) ship
    only NCCL_DEBUG (verl also NCCL_CUMEM_ENABLE) and leave the interface and InfiniBand settings to each node's
    `ray start`. east_ds ships NCCL_* and GLOO_SOCKET_IFNAME when it joins a cluster: the GPU nodes of a cluster
    are alike, the driver's shell is where a run's settings are given, and a wrong interface fails in NCCL's
    bootstrap where a dropped one is silent. torch reads these in its process groups
    (torch/nn/parallel/distributed.py:304-353 lists them), and vLLM gives every group a gloo CPU group beside the
    NCCL one (vllm/distributed/parallel_state.py:506-511), so GLOO_SOCKET_IFNAME matters too. What names one
    host (NCCL_HOSTID) or one rendezvous (NCCL_COMM_ID) stays home; CUDA_VISIBLE_DEVICES and Ray's own flags
    never travel (NeMo-RL drops RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES the same way); UCX_* does not (nothing
    east_ds runs uses UCX)."""
    network = {"NCCL_SOCKET_IFNAME": "=eth0", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_IB_GID_INDEX": "3",
               "NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "eth0"}
    driver = {**network, "NCCL_HOSTID": "node7", "NCCL_COMM_ID": "10.0.0.1:23456", "CUDA_VISIBLE_DEVICES": "0,1",
              plan.NOSET_CUDA_VISIBLE_DEVICES: "1", "UCX_NET_DEVICES": "mlx5_0:1"}
    assert plan.actor_env(driver, joining_cluster=True) == network
    local = plan.actor_env(driver, joining_cluster=False)  # the local raylet inherits the driver's environment
    assert local == {**network, "NCCL_HOSTID": "node7", "NCCL_COMM_ID": "10.0.0.1:23456"}
    assert "NCCL_SOCKET_IFNAME" not in plan.actor_env(driver, True, job_env={"NCCL_SOCKET_IFNAME": "ib0"})


def test_trainer_rank_takes_the_gpu_ray_assigned_when_ray_leaves_devices_visible():
    """ray/_private/accelerators/nvidia_gpu.py:12, 109-117: with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES ("1"
    or "true", ray/_common/utils.py:58-62) Ray does not narrow CUDA_VISIBLE_DEVICES to the actor's GPU, so every
    rank of a node sees all its GPUs and LOCAL_RANK 0 puts them all on cuda:0 (DeepSpeed sets its device from
    LOCAL_RANK, deepspeed/runtime/engine.py:1941-1943, 1966). ray.get_gpu_ids() still names the assigned GPU, as an
    entry of the worker's CUDA_VISIBLE_DEVICES when the node had one (ray/_private/worker.py:1150-1163). OpenRLHF
    (openrlhf/trainer/ray/launcher.py:32-36) and verl (verl/single_controller/base/worker.py:281-289, which also
    calls set_device) take LOCAL_RANK from it under the flag; vLLM sets the flag for its own Ray TP workers and
    maps their devices itself (vllm/v1/executor/ray_executor_v2.py:88-96, 265)."""
    noset = {plan.NOSET_CUDA_VISIBLE_DEVICES: "1"}
    assert plan.trainer_local_rank({}, ["5"]) == 0  # Ray narrowed the devices: the rank's GPU is device 0
    assert plan.trainer_local_rank({plan.NOSET_CUDA_VISIBLE_DEVICES: "0"}, [3]) == 0
    assert plan.trainer_local_rank(noset, [3]) == 3  # no CUDA_VISIBLE_DEVICES: the id is the device index
    assert plan.trainer_local_rank({plan.NOSET_CUDA_VISIBLE_DEVICES: "True", "CUDA_VISIBLE_DEVICES": "3,5,6"},
                                   ["5"]) == 1  # its position among the devices this process sees
    assert plan.trainer_local_rank({**noset, "CUDA_VISIBLE_DEVICES": "3,5"}, ["5", "5"]) == 1  # a shared GPU
    assert plan.trainer_local_rank(noset, []) == 0  # a rank without a GPU
    with pytest.raises(ValueError, match=r"Ray assigned GPU 7, which CUDA_VISIBLE_DEVICES='3,5' of this process"):
        plan.trainer_local_rank({**noset, "CUDA_VISIBLE_DEVICES": "3,5"}, ["7"])
    with pytest.raises(ValueError, match=r"holds one GPU; Ray assigned \['3', '5'\]"):
        plan.trainer_local_rank(noset, ["3", "5"])


def test_offloading_ranks_get_the_cpus_their_node_can_spare():
    """Ray gives a worker OMP_NUM_THREADS=floor(num_cpus) when none is set (ray/_private/utils.py:235-272), so a
    one-CPU rank runs DeepSpeed's CPUAdam (an OpenMP loop, deepspeed/ops/csrc/adam/cpu_adam_impl.cpp:60, 292) on
    one thread under ds_configs/*_offload.json. DeepSpeed's own launcher splits a node's cores evenly among its
    local ranks and sets OMP_NUM_THREADS to that (deepspeed/launcher/launch.py:219-221,
    deepspeed/utils/numa.py:119). Here each GPU's share of the CPUs of the node with the fewest per GPU, less the
    one its engine bundle keeps; placement.offload_cpus_per_rank overrides it. The bundles ask for the same
    CPUs, so what the run asks Ray for still fits every node."""
    from east_ds.cluster.placement import placement_needs
    from east_ds.config import ConfigError, PlacementConfig, RolloutConfig, TrainConfig, load_config

    assert plan.optimizer_offloaded({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})
    assert not plan.optimizer_offloaded({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
    assert plan.trainer_rank_cpus(True, None, [(96, 8), (64, 8)]) == 7  # the smaller node decides: 8 per GPU - 1
    assert plan.trainer_rank_cpus(True, None, [(8, 8)]) == 1 and plan.trainer_rank_cpus(True, None, []) == 1
    assert plan.trainer_rank_cpus(False, 6, [(96, 8)]) == 1  # a rank that does not offload
    assert plan.trainer_rank_cpus(True, 6, [(96, 8)]) == 6
    assert plan.rank_thread_env(7) == {"OMP_NUM_THREADS": "7"} and plan.rank_thread_env(1) == {}

    train = TrainConfig(deepspeed_config="ds_configs/zero3_offload.json", num_ranks=2, global_batch_size=16,
                        gradient_accumulation_steps=4)
    rollout = RolloutConfig(num_engines=4)
    [shared] = placement_needs(rollout, train, PlacementConfig(mode="colocated", offload_cpus_per_rank=7), 8)
    assert shared.bundles == [{"GPU": 1.0, "CPU": 8.0}] * 2 + [{"GPU": 1.0, "CPU": 1.0}] * 2  # engine 1 + rank 7
    split = placement_needs(rollout, train, PlacementConfig(mode="split", offload_cpus_per_rank=7), 8)
    assert split[1].bundles == [{"GPU": 1.0, "CPU": 7.0}] * 2
    cpu = placement_needs(rollout, train, PlacementConfig(offload_cpus_per_rank=3), 0)
    assert cpu[1].bundles == [{"CPU": 3.0}] * 2
    with pytest.raises(ConfigError, match=r"placement.offload_cpus_per_rank must be at least 1, got 0"):
        placement_needs(rollout, train, PlacementConfig(offload_cpus_per_rank=0), 8)
    assert load_config(None, ["placement.offload_cpus_per_rank=4"]).placement.offload_cpus_per_rank == 4
    with pytest.raises(ConfigError, match="placement.offload_cpus_per_rank: expected an integer"):
        load_config(None, ["placement.offload_cpus_per_rank=all"])


OFFLOAD_RANKS = textwrap.dedent("""
    import json
    from east_ds.cluster.placement import Placement
    from east_ds.cluster.ray_utils import init_ray
    from east_ds.config import load_config
    from east_ds.training.actors import TrainerGroup

    init_ray(num_cpus=12, num_gpus=3)  # 4 CPUs per logical GPU; the raylet inherits this process's environment
    cfg = load_config(None, ["placement.mode=split", "training.deepspeed_config=ds_configs/zero2_offload.json",
                             "training.num_ranks=2", "training.global_batch_size=2", "training.micro_batch_size=1",
                             "training.gradient_accumulation_steps=1"])
    placement = Placement.of(cfg, 3)
    group = TrainerGroup("unused", cfg.training, cfg.model, 2, **placement.trainer_options())
    keys = ("local_rank", "gpu_ids", "cuda_visible_devices", "threads", "omp_num_threads", "resources")
    try:
        print("SEEN", json.dumps({"rank_cpus": placement.rank_cpus, "trainer_bundles": placement.needs[-1].bundles,
                                  "ranks": [{k: where[k] for k in keys} for where in group.locations]}),
              flush=True)
    finally:
        group.shutdown()
""")


@pytest.mark.slow
@pytest.mark.cluster
def test_offloading_ranks_run_their_cpus_as_threads_on_the_gpu_ray_assigned(tmp_path):
    """Real Ray with 3 logical GPUs and 12 CPUs, started (as by `ray start`) with
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1 and CUDA_VISIBLE_DEVICES=3,5,6; split placement, 2 trainer ranks
    with ds_configs/zero2_offload.json. Each rank asks Ray for 3 CPUs (12 / 3 GPUs - 1) and sees them as 3 torch
    threads and OMP_NUM_THREADS (a one-CPU rank sees the local Ray's core count, 2 here, or Ray's 1 on a
    cluster); Ray left CUDA_VISIBLE_DEVICES whole (nvidia_gpu.py:109-117), and each rank's LOCAL_RANK is its own
    GPU's position in it, not 0 for both (test_trainer_rank_takes_the_gpu_ray_assigned_when_ray_leaves_devices_
    visible). The ranks form their gloo group; nothing is trained."""
    import os

    env = {**os.environ, "RAY_ADDRESS": "", plan.NOSET_CUDA_VISIBLE_DEVICES: "1", "CUDA_VISIBLE_DEVICES": "3,5,6"}
    out = subprocess.run([sys.executable, "-c", OFFLOAD_RANKS], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [seen] = [json.loads(x.removeprefix("SEEN ")) for x in out.stdout.splitlines() if x.startswith("SEEN ")]
    assert seen["rank_cpus"] == 3 and seen["trainer_bundles"] == [{"GPU": 1.0, "CPU": 3.0}] * 2
    for rank in seen["ranks"]:
        assert rank["resources"]["CPU"] == 3.0 and rank["resources"]["GPU"] == 1.0
        assert rank["threads"] == 3 and rank["omp_num_threads"] == "3"
        assert rank["cuda_visible_devices"] == "3,5,6"
        [gpu] = rank["gpu_ids"]
        assert rank["local_rank"] == ["3", "5", "6"].index(gpu)
    assert len({rank["local_rank"] for rank in seen["ranks"]}) == 2


def test_trainer_backend_follows_deepspeeds_accelerator():
    """deepspeed/accelerator/cuda_accelerator.py:34 talks nccl, cpu_accelerator.py:31-34 ccl or gloo; east_ds asks
    DeepSpeed's accelerator for the device, so a CUDA node told DS_ACCELERATOR=cpu uses gloo (NCCL refuses CPU
    tensors), and the group's timeout covers rank 0 exporting alone (torch's NCCL default is 10 minutes,
    ProcessGroupNCCL.hpp)."""
    assert plan.process_group_backend("cuda") == "nccl"
    assert plan.process_group_backend("cpu") == "gloo"
    assert plan.PROCESS_GROUP_TIMEOUT_MIN >= 30


def test_jit_op_builds_use_the_interpreters_own_ninja(tmp_path):
    """deepspeed/ops/op_builder/builder.py:588-613 JIT-builds an op with torch.utils.cpp_extension.load, which runs
    `ninja` by name (torch/utils/cpp_extension.py:2860), so PATH decides which ninja builds it; on GPUs that is
    every CUDA op and CPUAdam, minutes each. Measured here: the venv's ninja 1.13 and the system's 1.11 find each
    other's build log a changed command line (`ninja -d explain`) and rebuild the op each time the other ran."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    python = str(venv / "python")
    assert plan.jit_build_path("/usr/bin:/bin", python) == "/usr/bin:/bin"  # no ninja beside it: PATH as it was
    (venv / "ninja").touch()
    assert plan.jit_build_path("/usr/bin:/bin", python) == f"{venv}:/usr/bin:/bin"
    assert plan.jit_build_path(f"/usr/bin:{venv}:/bin", python) == f"{venv}:/usr/bin:/bin"  # moved, not doubled
    assert plan.jit_build_path("", python) == str(venv)
