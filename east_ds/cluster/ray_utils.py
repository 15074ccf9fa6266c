"""Starting or joining Ray. Ray is imported here and in the modules that define actors, nowhere else."""

from __future__ import annotations

import os
from concurrent.futures import Future


class NodeLostError(RuntimeError):
    """An actor died because its Ray node died; the message names the node (id and address)."""


class WeightSyncError(RuntimeError):
    """A live weight update failed or timed out; the message names the participant and what it raised."""


def init_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` ("auto" for a running one, default $RAY_ADDRESS), or start a local Ray
    bound to 127.0.0.1. `num_gpus` (a local Ray only): GPUs to advertise, e.g. logical GPUs on a CPU machine.

    A local Ray advertises more logical CPUs than the machine has (at least 8): on a 2-core machine the vLLM
    engines and the training ranks take turns rather than run at once, and each actor reserves one logical CPU.
    """
    import ray

    from east_ds.cluster.device_plan import actor_env

    if ray.is_initialized():
        return
    # Inside `ray job submit` (or with RAY_ADDRESS exported) the cluster is already there: join it.
    address = address or os.environ.get("RAY_ADDRESS", "")
    env = {"env_vars": actor_env(os.environ, joining_cluster=bool(address), job_env=_job_env())}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    # Ray gives an actor with num_cpus=1 OMP_NUM_THREADS=1. On a local CPU machine the engines and the trainer
    # take turns, so each may use every core (measured: the vLLM-CPU engine actor was 20% slower than the same
    # engine in the driver process with one thread).
    env["env_vars"].setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    ray.init(
        num_cpus=num_cpus or max(8, os.cpu_count() or 1),
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=env,
        log_to_driver=True,
    )


def started(start: Future | None):
    """What a background start of actors (a Future) returned, once it is over; None when there was none or it
    failed. Callers that need the error ask the Future itself; this is for shutting down whatever did start."""
    if start is None or start.exception() is not None:
        return None
    return start.result()


def cluster_gpus() -> float:
    """GPUs in the Ray cluster (0 on a CPU machine)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpu_node_shapes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) that each alive node with GPUs advertises (device_plan.trainer_rank_cpus)."""
    import ray

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"]["GPU"])) for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]


def _job_env() -> dict:
    """The env_vars of the Ray job's own runtime_env when this driver runs as a Ray job, else {}."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}
