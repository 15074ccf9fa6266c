"""Every decision that differs on a GPU, each in one small pure function.

No GPU is lent to this project's development machines, so the GPU-only paths are written blind. To keep them
honest, each choice that depends on the device (the device of a communicator, an engine actor's Ray options and
environment, vLLM's engine arguments, sleep level and wake order, DeepSpeed's precision policy, where weight
buckets are fetched) is made here, from plain arguments, and `tests/test_gpu_plan.py` pins what each returns in
the GPU case, citing the upstream line that makes it right. The callers (vllm_engine, engine_pool, driver,
train_engine, train_actors) only apply what these return. docs/gpu.md lists each path, its test, and what only a
real GPU can still show.

This module imports nothing heavy (no torch, Ray, vLLM or DeepSpeed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

WORKER_EXTENSION = "east_ds.rollout.vllm_engine.EastWorkerExtension"  # vLLM worker mixin with east_ds's update methods
SPLIT_GPU_MEMORY_UTILIZATION = 0.92  # vLLM 0.32's own default (CacheConfig.gpu_memory_utilization): the engine
# owns its GPU in split placement
COLOCATED_GPU_MEMORY_UTILIZATION = 0.5  # verl's rollout default when the trainer shares the GPU


# ----------------------------------------------------------------------------------------------------------------
# The environment actors see

ACTOR_ENV_PREFIXES = ("VLLM_", "DS_", "TORCH_", "OMP_", "TOKENIZERS_", "HF_", "PYTHONPATH",
                      "NCCL_", "GLOO_SOCKET_IFNAME")  # the network settings of NCCL and gloo travel too
NODE_SPECIFIC = ("VLLM_HOST_IP", "VLLM_HOST_PORT", "VLLM_CPU_OMP_THREADS_BIND", "DS_ACCELERATOR",
                 "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS",
                 "NCCL_HOSTID", "NCCL_COMM_ID")  # one host's identity; one job's rendezvous address
NEVER_SHIPPED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # secrets: a runtime_env is shown on Ray's dashboard


def actor_env(driver_env: Mapping[str, str], joining_cluster: bool, job_env: Mapping[str, str] | None = None) -> dict:
    """The env_vars of the runtime_env the driver gives every actor it starts.

    The driver's settings of east_ds's stack (VLLM_*, DS_*, TORCH_*, OMP_*, TOKENIZERS_*, HF_*) travel with it, but
    never its secrets. So do NCCL's (NCCL_*: socket interface, InfiniBand, debug) and gloo's interface
    (GLOO_SOCKET_IFNAME): the GPU nodes of one cluster are alike, the driver's shell is where a user sets them
    for a run, and a wrong interface fails at once in NCCL's bootstrap where a dropped one fails silently (NCCL
    picks another interface, slow or stuck). A cluster whose nodes differ sets them at each node's `ray start`
    and not in the driver's shell. CUDA_VISIBLE_DEVICES (Ray sets it per actor) and Ray's own flags never travel.
    Joining a running cluster, values that describe the driver's own node stay home: its IP as
    vLLM sees it (vLLM itself refuses to copy VLLM_HOST_IP to its workers), its core binding, a DeepSpeed
    accelerator forced to the CPU, a build directory inside its venv, its thread count, NCCL's host identity and
    a NCCL rendezvous address; each node's own environment (from `ray start`) holds those. Inside a Ray job, keys
    the job's runtime_env already sets are left to it (Ray refuses to merge two runtime_envs that set the same
    key)."""
    job_env = job_env or {}
    out = {}
    for k, v in driver_env.items():
        if not k.startswith(ACTOR_ENV_PREFIXES) or k in NEVER_SHIPPED or k in job_env:
            continue
        if joining_cluster and k in NODE_SPECIFIC:
            continue
        out[k] = v
    return out


def jit_build_path(path: str, executable: str, exists=None) -> str:
    """PATH for a process that may JIT-build DeepSpeed ops (CUDA ops and CPUAdam on GPUs, the shared-memory
    all-reduce on CPUs): the interpreter's own bin directory first when it holds a `ninja`, because torch's
    cpp_extension runs whichever `ninja` PATH finds first, and two ninja versions sharing one build directory
    each see the other's build log as a changed command line and rebuild everything (measured here: pip's ninja
    1.13 in the venv and the system's 1.11 alternated, 35-66 s per rebuild of the shm op). `executable` is
    sys.executable, unresolved (a venv's python is a link into the base interpreter's directory)."""
    import os

    exists = exists or os.path.exists
    bindir = os.path.dirname(executable)
    if not bindir or not exists(os.path.join(bindir, "ninja")):
        return path
    rest = [p for p in path.split(os.pathsep) if p and p != bindir]
    return os.pathsep.join([bindir, *rest])


NOSET_CUDA_VISIBLE_DEVICES = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"  # Ray leaves every GPU visible


def trainer_local_rank(env: Mapping[str, str], gpu_ids: Sequence[str | int], default: int = 0) -> int:
    """The CUDA device index (LOCAL_RANK: DeepSpeed sets its device from it) of a trainer rank whose actor Ray
    gave the GPU(s) `gpu_ids` (`ray.get_gpu_ids()`), in a process whose environment is `env`.

    Ray normally narrows CUDA_VISIBLE_DEVICES to the actor's own GPU, so every rank is device 0 (`default`). With
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES set at `ray start` (parsed as Ray does: "1" or "true") Ray leaves
    the node's devices visible, and device 0 would put every rank of a node on the same GPU; the rank then uses
    its assigned GPU, as OpenRLHF does. Ray reports the ids of a node started with CUDA_VISIBLE_DEVICES as
    entries of that list, so the device index is the id's position in it, or the id itself when it is unset."""
    if env.get(NOSET_CUDA_VISIBLE_DEVICES, "").lower() not in ("1", "true") or not gpu_ids:
        return default
    ids = sorted({str(g) for g in gpu_ids})
    if len(ids) > 1:
        raise ValueError(f"a trainer rank holds one GPU; Ray assigned {ids}")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return int(ids[0])
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    if ids[0] not in devices:
        raise ValueError(f"{NOSET_CUDA_VISIBLE_DEVICES} is set and Ray assigned GPU {ids[0]}, which "
                         f"CUDA_VISIBLE_DEVICES={visible!r} of this process does not list; start Ray without "
                         f"{NOSET_CUDA_VISIBLE_DEVICES}, or with the same CUDA_VISIBLE_DEVICES on every process")
    return devices.index(ids[0])


def engine_visible_devices(env: Mapping[str, str], gpu_ids: Sequence[str | int],
                           tensor_parallel_size: int) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a TP 1 engine actor that Ray gave one GPU (`ray.get_gpu_ids()`), set before vLLM
    or torch touches CUDA: with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES Ray leaves the node's devices
    visible, and every engine of the node would build on cuda:0. The device is the one trainer_local_rank
    resolves (an entry of the node's CUDA_VISIBLE_DEVICES, or the id itself). TP > 1: nothing; vLLM's Ray
    executor gives its own workers their devices. Without the flag: nothing (Ray narrowed it already)."""
    if tensor_parallel_size != 1 or env.get(NOSET_CUDA_VISIBLE_DEVICES, "").lower() not in ("1", "true") \
            or not gpu_ids:
        return {}
    ids = sorted({str(g) for g in gpu_ids})
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = trainer_local_rank(env, ids[:1])
    return {"CUDA_VISIBLE_DEVICES": visible[index] if visible else str(index)}


def optimizer_offloaded(ds_config: Mapping[str, Any]) -> bool:
    """Whether a DeepSpeed config (its JSON) offloads the optimizer (to the CPU or NVMe): then DeepSpeed's CPUAdam
    takes each step on the CPU (training.engine.build_ds_config reads the same key)."""
    zero = ds_config.get("zero_optimization") or {}
    return (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)


def trainer_rank_cpus(offloading: bool, configured: int | None,
                      gpu_nodes: Sequence[tuple[float, float]]) -> int:
    """CPUs each trainer rank asks Ray for, and the threads it runs (OMP_NUM_THREADS, torch): one unless the
    optimizer is offloaded; then `configured` (placement.offload_cpus_per_rank) when set, else each GPU's share
    of the CPUs of the GPU node with the fewest per GPU (`gpu_nodes`: (CPUs, GPUs) of each node with GPUs),
    less one: the CPU that the engine's bundle keeps beside each GPU. A node holds at most one rank per GPU and
    may hold engine bundles too, so that share fits wherever Ray puts the bundles. No GPU nodes: one."""
    if configured is not None and configured < 1:
        raise ValueError(f"placement.offload_cpus_per_rank must be at least 1, got {configured}")
    if not offloading:
        return 1
    if configured is not None:
        return configured
    shares = [int(cpus // gpus) for cpus, gpus in gpu_nodes if gpus > 0]
    return max(1, min(shares) - 1) if shares else 1


def rank_thread_env(rank_cpus: int) -> dict[str, str]:
    """env_vars for a trainer rank actor of `rank_cpus` CPUs. Ray sets OMP_NUM_THREADS=floor(num_cpus) only when
    the worker's environment has none (a local Ray's driver ships its core count), so a rank of more than one
    CPU sets it itself; a one-CPU rank keeps what it finds."""
    return {"OMP_NUM_THREADS": str(rank_cpus)} if rank_cpus > 1 else {}


# ----------------------------------------------------------------------------------------------------------------
# Rollout engines


@dataclass(frozen=True)
class RolloutDefaults:
    enforce_eager: bool  # True: no CUDA graphs
    gpu_memory_utilization: float  # fraction of the GPU vLLM may take
    seed_per_request: bool  # each question's samples seeded on their own (reproducible, slower on GPUs)


def rollout_defaults(on_gpu: bool, colocated: bool, enforce_eager: bool | None = None,
                     gpu_memory_utilization: float | None = None,
                     seed_per_request: bool | None = None) -> RolloutDefaults:
    """Resolve the rollout settings a config leaves unset (None) by device and placement.

    GPU: CUDA graphs on (vLLM 0.32 sleeps and reloads weights with graphs captured); 0.92 of the GPU in split
    placement, 0.5 when the trainer shares it; no per-request seed (vLLM samples seeded requests one by one in
    Python at every step). CPU: eager (vLLM-CPU compiles otherwise) and a seed per request (measured 1.02-1.12x
    the unseeded cost; it makes a shard's samples independent of which engine ran it). A value the config sets
    is kept."""
    return RolloutDefaults(
        enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
        gpu_memory_utilization=gpu_memory_utilization if gpu_memory_utilization is not None else (
            COLOCATED_GPU_MEMORY_UTILIZATION if colocated else SPLIT_GPU_MEMORY_UTILIZATION),
        seed_per_request=(not on_gpu) if seed_per_request is None else seed_per_request,
    )


def engine_kwargs(model_path: str, seed: int, dtype: str, max_model_len: int, tensor_parallel_size: int,
                  enable_prefix_caching: bool, trust_remote_code: bool, on_gpu: bool, enforce_eager: bool,
                  gpu_memory_utilization: float, enable_sleep: bool,
                  max_num_seqs: int | None = None, lora_rank: int = 0) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for one engine.

    Both devices: east_ds's weight-update methods are a worker extension called by name, so they cross the
    engine core's process boundary without pickled callables. GPU: sleep mode when asked, and TP workers as Ray
    actors in the engine's placement group. CPU: TP workers as processes ("mp"; vLLM-CPU has no Ray executor),
    and whole-prompt prefill (a seeded request whose prefill is chunked crashes vLLM-CPU 0.32). `lora_rank` > 0
    (training.lora.r): LoRA on, one adapter slot (east_ds serves one policy), rank slots of vllm_lora_rank."""
    kw: dict[str, Any] = dict(model=model_path, seed=seed, dtype=dtype, max_model_len=max_model_len,
                              tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
                              enable_prefix_caching=enable_prefix_caching, trust_remote_code=trust_remote_code,
                              worker_extension_cls=WORKER_EXTENSION)
    if max_num_seqs is not None:
        kw["max_num_seqs"] = max_num_seqs
    if lora_rank > 0:
        kw.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=1)
    if on_gpu:
        kw["gpu_memory_utilization"] = gpu_memory_utilization
        kw["enable_sleep_mode"] = enable_sleep
        if tensor_parallel_size > 1:
            kw["distributed_executor_backend"] = "ray"
    else:
        if tensor_parallel_size > 1:
            kw["distributed_executor_backend"] = "mp"
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(max_model_len, 4096)
    return kw


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py, MaxLoRARanks (vLLM 0.32)


def vllm_lora_rank(r: int) -> int:
    """vLLM's `max_lora_rank` for adapters of rank `r`: the smallest rank vLLM accepts (it takes only the values
    of VLLM_LORA_RANKS) that is at least r; vLLM refuses an adapter whose rank is above it. ValueError above 512."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"training.lora.r={r}: vLLM serves LoRA adapters of rank at most {VLLM_LORA_RANKS[-1]}")


def engine_process_env(on_gpu: bool, env: Mapping[str, str], gcs_address: str = "") -> dict[str, str]:
    """Environment the engine actor sets for itself before building vLLM, once it knows its own device.

    GPU: the engine core in a process of its own (VLLM_ENABLE_V1_MULTIPROCESSING=1, vLLM's default), so
    scheduling and output handling overlap the model's forward; and RAY_ADDRESS set to the actor's own cluster
    (`gcs_address`) when the environment has none: with tensor parallelism that process calls ray.init(), and
    inside a Ray actor of a local `ray.init()` cluster there is no address to find, so it would start a second
    Ray without the engine's placement group. CPU: whatever the environment says (east_ds's Makefile and tests use
    0: an engine builds in 2 s instead of 13 s)."""
    if on_gpu:
        out = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        if gcs_address and not env.get("RAY_ADDRESS"):
            out["RAY_ADDRESS"] = gcs_address
        return out
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": env.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}


@dataclass(frozen=True)
class EngineActorPlan:
    num_cpus: float
    num_gpus: float
    bundle_index: int | None  # the engine's first bundle in the placement group (None: no placement group)
    env: dict[str, str]  # the actor's runtime_env env_vars


def engine_actor_plan(index: int, tensor_parallel_size: int, gpu_bundles: bool, gpu_share: float,
                      env: Mapping[str, str], bundles: list[int] | None = None) -> EngineActorPlan:
    """Ray options and environment of engine actor `index`.

    With GPU bundles, engine e owns `bundles` (engine_bundles: tp bundles of one node; default [e*tp, (e+1)*tp)),
    the actor on the first. TP 1: the actor takes `gpu_share` of its bundle's
    GPU (0.5 when colocated, so trainer rank e fits beside it). TP > 1: the actor takes no GPU; vLLM's Ray
    executor starts one worker per bundle (VLLM_RAY_BUNDLE_INDICES), each asking for VLLM_RAY_PER_WORKER_GPUS of
    a GPU, set to `gpu_share` so that colocated trainer ranks still fit on those bundles. A zero-GPU actor keeps
    the node's CUDA_VISIBLE_DEVICES (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0), so vLLM in it still sees the GPUs
    its workers will use. Without GPU bundles: a plain one-CPU actor."""
    base = {"VLLM_ENABLE_V1_MULTIPROCESSING": env.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
            # read by vLLM-CPU only: an engine whose own device is a CPU, logical GPUs or not
            "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if not gpu_bundles:
        return EngineActorPlan(num_cpus=1, num_gpus=0, bundle_index=None, env=base)
    bundles = list(bundles) if bundles is not None else [index * tensor_parallel_size + k
                                                          for k in range(tensor_parallel_size)]
    if len(bundles) != tensor_parallel_size:
        raise ValueError(f"engine {index}: {len(bundles)} bundles for tensor_parallel_size {tensor_parallel_size}")
    first = bundles[0]
    if tensor_parallel_size == 1:
        return EngineActorPlan(num_cpus=1, num_gpus=gpu_share, bundle_index=first, env=base)
    workers = {"VLLM_RAY_BUNDLE_INDICES": ",".join(str(b) for b in bundles),
               "VLLM_RAY_PER_WORKER_GPUS": f"{gpu_share:g}", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    return EngineActorPlan(num_cpus=0, num_gpus=0, bundle_index=first, env={**base, **workers})


def refs_fetched_in_actor(tensor_parallel_size: int, engine_core_in_process: bool) -> bool:
    """Where object-store weight buckets are fetched: in the engine actor (True), or by the vLLM worker itself.

    A worker can `ray.get` only when it is this Ray actor's own process: TP 1 with the engine core in-process.
    Otherwise the refs would travel through vLLM's own messages (msgpack to the engine core, a pickled message
    queue to Ray TP workers), which lose their Ray owner, so the actor fetches and vLLM carries the tensors."""
    return not (tensor_parallel_size == 1 and engine_core_in_process)


SHM_DIR = "/dev/shm"
SHM_MARGIN_BYTES = 64 * 2**20  # left free in /dev/shm for NCCL's and vLLM's own shared-memory segments


def weight_handoff_dir(needed_bytes: int, shm_free_bytes: int | None, fallback: str) -> str:
    """Where an engine actor that fetched object-store buckets writes them as safetensors files for its vLLM
    workers (refs_fetched_in_actor): only the files' paths then cross vLLM's `collective_rpc`, whose msgpack
    encoding turns a tensor argument into a plain list once the engine core runs in its own process.

    /dev/shm (memory on this node, where the engine's workers run) when it holds the model with a margin; else
    `fallback` (the temp directory on disk). Containers often mount a 64 MiB /dev/shm, and a full tmpfs would
    fail the write half-way, so the free space is checked first. `shm_free_bytes` None: no /dev/shm."""
    if shm_free_bytes is not None and shm_free_bytes >= needed_bytes + SHM_MARGIN_BYTES:
        return SHM_DIR
    return fallback


# ----------------------------------------------------------------------------------------------------------------
# Sharing GPUs (colocated placement)


@dataclass(frozen=True)
class SleepPlan:
    level: int  # vLLM sleep level: 1 keeps weights in pinned host memory, 2 discards them
    wake_order: tuple[str, ...]  # steps after training, in order


def sleep_plan(reload_after_wake: bool = True, adapter_only: bool = False) -> SleepPlan:
    """How colocated engines give the GPU to the trainer and take it back.

    The driver reloads the weights after every wake, so level 2 (discard the weights) saves copying them to pinned
    host memory only to overwrite them (8 engines of an 8B model: about 128 GB of host RAM). Waking: the trainer
    has released its cached memory first; then the weights' memory comes back, the new weights load into it, and
    only then the KV cache, so the two never sit beside a full trainer allocation.

    `adapter_only` (training.lora): the base weights never change during a run, so the engine sleeps at level 1
    (weights to pinned host memory, KV cache discarded) and wakes with the same base; only the adapter is loaded
    between the two wakes (the LoRA slots are part of the weights' memory)."""
    if adapter_only:
        return SleepPlan(level=1, wake_order=("release trainer memory", "wake weights", "update adapter",
                                              "wake kv_cache"))
    if not reload_after_wake:
        return SleepPlan(level=1, wake_order=("release trainer memory", "wake all"))
    return SleepPlan(level=2, wake_order=("release trainer memory", "wake weights", "update weights",
                                          "wake kv_cache"))


# ----------------------------------------------------------------------------------------------------------------
# Communicators and precision


def communicator_device(has_cuda: bool, current_device: int = 0) -> str:
    """The device of a NCCL weight-broadcast end: always indexed ("cuda:0"), never bare "cuda".

    vLLM's PyNcclCommunicator stores the device it was given and asserts `tensor.device == self.device` in every
    collective; a tensor made on "cuda" lives on "cuda:0", and torch.device("cuda:0") != torch.device("cuda")."""
    return f"cuda:{current_device}" if has_cuda else "cpu"


def broadcast_finish_steps(nccl: bool) -> tuple[str, ...]:
    """What each end of the weight-broadcast group does after its last bucket, in order.

    NCCL: PyNcclCommunicator.broadcast only enqueues the collective on the stream it is given and returns, so the
    stream is synchronized first (vLLM's own NCCL weight transfer does so before returning); then every rank
    meets at the group's barrier, and only then is the communicator destroyed (an abort of whatever is still in
    flight). The TCP-store stand-in has nothing queued and no communicator."""
    if nccl:
        return ("synchronize stream", "barrier", "destroy communicator")
    return ("barrier",)


PROCESS_GROUP_TIMEOUT_MIN = 60  # trainer process groups: rank 0 alone exports a large model while the others wait


def process_group_backend(accelerator: str) -> str:
    """The trainer's torch.distributed backend for DeepSpeed's accelerator device name: NCCL on CUDA, gloo on the
    CPU (also on a CUDA node that trains on the CPU with DS_ACCELERATOR=cpu: NCCL would refuse CPU tensors)."""
    return "nccl" if accelerator == "cuda" else "gloo"


def precision_sections(dtype: str, zero_stage: int) -> dict[str, Any]:
    """DeepSpeed's precision sections for a model dtype: bf16/fp16 enabled as the model is, and with bf16 under
    ZeRO 1-3 gradients accumulated in fp32 across micro-batches (DeepSpeed's default accumulates them in the model
    dtype; bf16 keeps 8 bits of mantissa, so 8 accumulated micro-batches lose precision). ZeRO 0 with bf16 has no
    fp32 accumulation in DeepSpeed 0.19 (it raises "unsupported mix"), so it keeps the default."""
    bf16, fp16 = dtype == "bfloat16", dtype == "float16"
    out: dict[str, Any] = {"bf16": {"enabled": bf16},
                           "fp16": {"enabled": fp16, **({"initial_scale_power": 16} if fp16 else {})}}
    if bf16 and zero_stage >= 1:
        out["data_types"] = {"grad_accum_dtype": "fp32"}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Placement across nodes


def engine_bundles(bundle_nodes: Mapping[int, str], num_engines: int, tensor_parallel_size: int) -> list[list[int]]:
    """The placement-group bundles each engine takes: its TP workers' VLLM_RAY_BUNDLE_INDICES (the engine actor
    sits on the first), from where Ray put each bundle (`placement_group_table(pg)["bundles_to_node_id"]`).

    Ray's PACK puts the bundles on as few nodes as it can but does not keep consecutive indices on one node
    (ray-project/ray#51117), and vLLM's Ray executor puts worker k on the k-th index it is given, wherever that
    bundle is; so engine e on bundles [e*tp, (e+1)*tp) can run its tensor parallel all-reduces across nodes
    although every node has room for whole engines. Here bundles are grouped by node (ascending within a node,
    nodes in the order of their lowest bundle) and each engine takes tp bundles of one node; only bundles left
    over on nodes that cannot hold another whole engine are combined, for the last engines (engines_across_nodes
    names them). TP 1: engine e on bundle e, as before."""
    if num_engines < 1 or tensor_parallel_size < 1:
        raise ValueError(f"num_engines ({num_engines}) and tensor_parallel_size ({tensor_parallel_size}) must be >= 1")
    need = num_engines * tensor_parallel_size
    if len(bundle_nodes) < need:
        raise ValueError(f"{num_engines} engines x tensor_parallel_size {tensor_parallel_size} need {need} bundles; "
                         f"the placement group has {len(bundle_nodes)}")
    if tensor_parallel_size == 1:
        return [[e] for e in range(num_engines)]
    by_node: dict[str, list[int]] = {}
    for b in sorted(bundle_nodes):
        by_node.setdefault(bundle_nodes[b], []).append(b)
    out: list[list[int]] = []
    leftover: list[int] = []
    for bundles in by_node.values():
        whole = len(bundles) - len(bundles) % tensor_parallel_size
        out += [bundles[k:k + tensor_parallel_size] for k in range(0, whole, tensor_parallel_size)]
        leftover += bundles[whole:]
    out += [leftover[k:k + tensor_parallel_size] for k in range(0, len(leftover), tensor_parallel_size)]
    return out[:num_engines]


def engines_across_nodes(assignment: list[list[int]], bundle_nodes: Mapping[int, str]) -> list[int]:
    """The engines of `assignment` (engine_bundles) whose TP workers are on more than one node."""
    return [e for e, bundles in enumerate(assignment) if len({bundle_nodes[b] for b in bundles}) > 1]


def tp_node_shortfall(node_gpus: Mapping[str, float], num_engines: int, tensor_parallel_size: int) -> str:
    """'' when the nodes (node id -> GPUs it has) can hold every engine's TP workers on one node each; else a
    sentence saying how many engines would span nodes. vLLM then only warns (v1/executor/ray_utils.py
    _verify_bundles) and runs its all-reduces over the network, slow, or stuck without a working NCCL network
    setting. Whole GPUs per node; a node's GPUs left over below tensor_parallel_size hold no whole engine."""
    if tensor_parallel_size <= 1:
        return ""
    whole = sum(int(g + 1e-9) // tensor_parallel_size for g in node_gpus.values())
    if whole >= num_engines:
        return ""
    gpus = ", ".join(f"{g:g}" for g in sorted(node_gpus.values(), reverse=True)) or "none"
    return (f"rollout.tensor_parallel_size={tensor_parallel_size}: the nodes' GPUs ({gpus}) hold {whole} whole "
            f"engine(s) of {num_engines}; the other {num_engines - whole} would run tensor parallel across nodes "
            f"(NCCL over the network). A tensor_parallel_size that divides the GPUs per node avoids it")
