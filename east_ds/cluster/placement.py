"""What a run needs from the Ray cluster, what is free, whether it is scheduled in time, and who holds the GPUs
when (Placement). Whether every node sees the run's files: storage.py.

    needs = placement_needs(cfg.rollout, cfg.training, cfg.placement, cluster_gpus)
    problems = shortfall(needs, free_resources())        # [] when everything fits
    note = check_fit(needs, total, free, wait, timeout_s, "this run")   # raises when it can never fit
    wait_placement_group(pg, need, timeout_s)            # SchedulingTimeout instead of waiting for ever
    wait_scheduled(refs, need, timeout_s)                # the same for actors (their first call's refs)

The needs mirror what rollout/engine_pool.py and training/actors.py ask Ray for:
- on a cluster with GPUs the engines hold one placement group of `num_engines * tensor_parallel_size` bundles
  `{GPU: 1, CPU: 1}`, PACK. `colocated`: trainer rank r sits on the engines' bundle r with half its GPU and its
  CPUs (c, below), so the shared bundles are `{GPU: 1, CPU: 1 + c}` and the trainer asks for nothing else.
  `split`: the ranks hold a placement group of their own, `{GPU: 1, CPU: c}` per rank, PACK.
- without GPUs engines are plain actors of one CPU each, ranks of c CPUs (no placement group).
c, a trainer rank's CPUs, is 1 unless its DeepSpeed config offloads the optimizer (trainer_rank_cpus).

Ray is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from east_ds.config import ConfigError, PlacementConfig, RolloutConfig, RunConfig, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARE = 0.5  # GPU fraction of an engine actor and of a trainer rank on a shared (colocated) bundle


class SchedulingTimeout(RuntimeError):
    """A placement group or actor was not scheduled in time (or, without placement.wait_for_resources, can never
    be: the whole cluster has less); the message names what was asked and what is free."""


@dataclass(frozen=True)
class Need:
    """One group of actors that must be scheduled together."""

    what: str  # "rollout engines" / "trainer ranks" / "rollout engines + trainer ranks"
    bundles: list[dict[str, float]]  # resources per bundle (or per actor when strategy is "")
    strategy: str  # placement-group strategy ("PACK", "SPREAD"), or "" for plain actors (no placement group)

    def total(self) -> dict[str, float]:
        """Resources summed over the bundles."""
        out: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def describe(self) -> str:
        """e.g. "4 bundles of {GPU: 1, CPU: 1}, PACK" or "2 x {CPU: 1}"."""
        groups: list[tuple[dict, int]] = []
        for b in self.bundles:
            if groups and groups[-1][0] == b:
                groups[-1] = (b, groups[-1][1] + 1)
            else:
                groups.append((b, 1))
        if self.strategy:
            parts = [f"{n} bundle{'s' if n != 1 else ''} of {_fmt_bundle(b)}" for b, n in groups]
            return ", ".join(parts) + f", {self.strategy}"
        return ", ".join(f"{n} x {_fmt_bundle(b)}" for b, n in groups)


def _num(v: float) -> str:
    return f"{v:g}"


def _fmt_bundle(b: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in b.items()) + "}"


def fmt_resources(res: Mapping[str, float]) -> str:
    """GPU and CPU first, then custom resources: "GPU 1, CPU 7, trainer_node 1"."""
    keys = [k for k in ("GPU", "CPU") if k in res] + sorted(k for k in res if k not in ("GPU", "CPU"))
    return ", ".join(f"{k} {_num(res[k])}" for k in keys) or "nothing"


def placement_needs(rollout: RolloutConfig, training: TrainConfig, placement: PlacementConfig,
                    cluster_gpus: float, rank_cpus: int | None = None) -> list[Need]:
    """What the engines (num_engines x tensor_parallel_size) and the trainer ranks ask Ray for under
    `placement.mode` on a cluster advertising `cluster_gpus` GPUs (see the module docstring). `rank_cpus`: each
    trainer rank's CPUs; None: trainer_rank_cpus (which asks Ray for the nodes' shape only when it must).

    Raises ConfigError when colocated training has more ranks than the engines have GPUs to share."""
    engine_gpus = rollout.num_engines * rollout.tensor_parallel_size
    ranks = training.num_ranks
    c = float(rank_cpus if rank_cpus is not None else trainer_rank_cpus(training, placement, cluster_gpus))
    eng, trn = dict(placement.engine_resources), dict(placement.trainer_resources)  # custom resources, per actor
    if cluster_gpus <= 0:
        return [Need("rollout engines", [{"CPU": 1.0, **eng}] * rollout.num_engines, ""),
                Need("trainer ranks", [{"CPU": c, **trn}] * ranks, "")]
    if placement.mode == "colocated":  # the ranks sit on the engines' bundles and ask for nothing of their own
        if ranks > engine_gpus:
            raise ConfigError(f"placement.mode=colocated: training.num_ranks ({ranks}) must be at most the engines' "
                              f"GPUs (rollout.num_engines x rollout.tensor_parallel_size = {engine_gpus})")
        shared = ([{"GPU": 1.0, "CPU": 1.0 + c, **eng}] * ranks
                  + [{"GPU": 1.0, "CPU": 1.0, **eng}] * (engine_gpus - ranks))
        return [Need("rollout engines + trainer ranks", shared, "PACK")]
    return [Need("rollout engines", [{"GPU": 1.0, "CPU": 1.0, **eng}] * engine_gpus, "PACK"),
            Need("trainer ranks", [{"GPU": 1.0, "CPU": c, **trn}] * ranks, "PACK")]


def deepspeed_json(path: str) -> dict:
    """The DeepSpeed JSON `training.deepspeed_config` names, looked up as training.engine.resolve_path does (as
    given, else from the repository root) without importing the engine; {} when there is none (training then
    fails with its own error naming the path)."""
    import json

    p = Path(path)
    if not (p.is_file() or p.is_absolute()):
        p = REPO_ROOT / p
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def trainer_rank_cpus(training: TrainConfig, placement: PlacementConfig, cluster_gpus: float) -> int:
    """CPUs (and threads) of each trainer rank: device_plan.trainer_rank_cpus for this config, on the GPU nodes
    Ray reports (asked only when the optimizer is offloaded, the config leaves the count to the cluster and the
    cluster has GPUs). Raises ConfigError for a count below one."""
    from east_ds.cluster import device_plan as plan

    offloading = plan.optimizer_offloaded(deepspeed_json(training.deepspeed_config))
    configured = placement.offload_cpus_per_rank
    nodes: list[tuple[float, float]] = []
    if offloading and configured is None and cluster_gpus > 0:
        from east_ds.cluster.ray_utils import gpu_node_shapes

        nodes = gpu_node_shapes()
    try:
        return plan.trainer_rank_cpus(offloading, configured, nodes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def cpu_engines(num_engines: int, tensor_parallel_size: int, cores: int | None = None) -> int:
    """How many vLLM-CPU engines a cluster without GPUs runs: at most one per `tensor_parallel_size` cores of this
    machine (`cores`, default os.cpu_count()), at least one. The pool, the placement and `east-ds eval` agree."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return min(num_engines, max(1, cores // tensor_parallel_size))


def check_fit(needs: Sequence[Need], total: Mapping[str, float], free: Mapping[str, float], wait: bool,
              timeout_s: float, what: str) -> str:
    """Raise SchedulingTimeout when the whole cluster (`total`) can never hold `needs`, unless `wait` (an
    autoscaling cluster). Return the line to print when what is `free` now is short (the placement groups then
    wait up to `timeout_s`), else "". `what`: "this run", "these engines"."""
    if not wait and (problems := shortfall(needs, total, have="in all")):
        raise SchedulingTimeout(f"the cluster can never hold {what}: " + "; ".join(problems)
                                + " (placement.wait_for_resources=true waits up to "
                                "placement.schedule_timeout_s for the cluster to grow)")
    if problems := shortfall(needs, free):
        return f"[east-ds] waiting up to {timeout_s:g} s for resources: " + "; ".join(problems)
    return ""


def shortfall(needs: Sequence[Need], free: Mapping[str, float], have: str = "free") -> list[str]:
    """One human-readable problem per resource the needs together ask for more of than `free` has, e.g.
    "rollout engines + trainer ranks need 6 GPUs (4 bundles of {GPU: 1, CPU: 1}, PACK + 2 x {GPU: 1});
    the cluster has 2 free" (`have` names what `free` is: "free", "in all"). Empty when everything fits."""
    totals: dict[str, float] = {}
    for n in needs:
        for k, v in n.total().items():
            totals[k] = totals.get(k, 0.0) + v
    problems = []
    for res, amount in totals.items():
        amount_have = float(free.get(res, 0.0))
        if amount > amount_have + 1e-9:
            askers = [n for n in needs if n.total().get(res, 0.0) > 0]
            problems.append(f"{' + '.join(n.what for n in askers)} need {_num(amount)} {res}s "
                            f"({' + '.join(n.describe() for n in askers)}); the cluster has {_num(amount_have)} {have}")
    return problems


_PG_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{32,}$")  # Ray's per-placement-group bookkeeping resources


def _plain(resources: Mapping[str, float]) -> dict[str, float]:
    """GPU, CPU and custom resources: not memory, node labels or what placement groups reserved."""
    skip = ("memory", "object_store_memory")
    return {k: float(v) for k, v in resources.items()
            if k not in skip and not k.startswith(("node:", "accelerator_type:")) and not _PG_RESOURCE.search(k)}


def free_resources() -> dict[str, float]:
    """Resources available now (GPU, CPU and custom ones; not memory or node labels). Ray must be initialised."""
    import ray

    return _plain(ray.available_resources())


def total_resources() -> dict[str, float]:
    """What every alive node advertises together (GPU, CPU and custom ones). Ray must be initialised."""
    import ray

    return _plain(ray.cluster_resources())


def node_gpus() -> dict[str, float]:
    """GPUs each alive node advertises (node id -> count; nodes without GPUs left out). Ray must be initialised."""
    import ray

    return {n["NodeID"]: float(n["Resources"]["GPU"]) for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0}


def bundle_nodes(pg: Any) -> dict[int, str]:
    """Where Ray put each bundle of a ready placement group: bundle index -> node id (device_plan.engine_bundles
    keeps each engine's TP workers on one node from it)."""
    from ray.util.placement_group import placement_group_table

    return {int(b): node for b, node in placement_group_table(pg)["bundles_to_node_id"].items()}


def actor_location() -> dict:
    """Where the calling Ray actor or task runs, as Ray sees it from inside: node, placement group, the resources
    and GPU ids Ray assigned, CUDA_VISIBLE_DEVICES, whether this process has a CUDA device, and its threads
    (torch's intra-op threads and OMP_NUM_THREADS)."""
    import ray
    import torch

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "placement_group": ctx.get_placement_group_id(), "resources": ctx.get_assigned_resources(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "cuda_visible_devices":
            os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda": torch.cuda.is_available(), "pid": os.getpid(),
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def device_memory() -> dict:
    """{"allocated", "reserved", "free", "total"} bytes on this process's current CUDA device; {} without one."""
    import torch

    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(), "free": free,
            "total": total}


def timeout_message(need: Need, timeout_s: float) -> str:
    """What a SchedulingTimeout says: what was asked (bundles, GPUs and CPUs each, strategy) and what is free."""
    total = need.total()
    try:
        free = fmt_resources(free_resources())
    except Exception as e:  # the message must not fail on a cluster that went away
        free = f"unknown ({type(e).__name__}: {e})"
    return (f"{need.what} not scheduled within {timeout_s:g} s: asked for {need.describe()} "
            f"(in all {fmt_resources(total)}); the cluster has free: {free}. Fewer engines/ranks, another "
            f"placement.mode, or a larger placement.schedule_timeout_s")


def wait_placement_group(pg: Any, need: Need, timeout_s: float) -> None:
    """Wait until placement group `pg` (asked as `need`) is ready; SchedulingTimeout after `timeout_s`
    (the group is removed first, so nothing stays reserved)."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import remove_placement_group

    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except GetTimeoutError:
        msg = timeout_message(need, timeout_s)
        remove_placement_group(pg)
        raise SchedulingTimeout(msg) from None


def wait_scheduled(refs: list, need: Need, timeout_s: float, poll: Callable[[], None] | None = None,
                   poll_every_s: float = 5.0) -> list:
    """`ray.get(refs)` of the actors' first calls, or SchedulingTimeout after `timeout_s` when some actor has not
    been scheduled (the caller kills the actors). Errors raised by the calls themselves propagate. `poll`, when
    given, is called every `poll_every_s` while waiting; it raises to give up early (e.g. a lost node)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, min(left, poll_every_s) if poll else left))
        if len(ready) == len(refs):
            return ray.get(refs)
        if time.monotonic() >= deadline:
            raise SchedulingTimeout(timeout_message(need, timeout_s))
        if poll is not None:
            poll()


class Placement:
    """Who holds the accelerators, and when (what each asks Ray for: cluster.placement_needs).

    colocated: engines and trainer ranks share the same GPUs (half a GPU each in Ray's accounting, rank r on the
      engines' placement-group bundle r); the engines sleep (free their GPU memory) before reference scoring,
      perplexity scoring and training; after training they wake in device_plan.sleep_plan's order: the weights'
      memory, the weight update, then the KV cache (each trainer call has returned its cached memory already).
    split: engines and trainer ranks get whole GPUs of their own (a placement group each); nothing sleeps.
    On a cluster without GPUs both are plain alternation: the phases take turns on the CPU.
    Ray's GPU count decides the placement; whether an engine or rank is on a GPU (vLLM sleep mode, nccl or gloo)
    is decided inside it by its own device, so logical GPUs on a CPU machine run the same placement code.
    """

    SHARE = SHARE  # GPU fraction of an engine actor and of a trainer rank when colocated

    def __init__(self, placement: PlacementConfig, rollout: RolloutConfig, training: TrainConfig,
                 gpus: float) -> None:
        self.colocated = placement.mode == "colocated" and gpus > 0
        self.gpus = gpus
        self.timeout = placement.schedule_timeout_s
        self.ranks = training.num_ranks
        if not gpus:
            rollout = dataclasses.replace(rollout, num_engines=cpu_engines(rollout.num_engines,
                                                                           rollout.tensor_parallel_size))
        self.rank_cpus = trainer_rank_cpus(training, placement, gpus)
        self.needs = placement_needs(rollout, training, placement, gpus, self.rank_cpus)
        self.num_engines, self.tensor_parallel_size = rollout.num_engines, rollout.tensor_parallel_size
        if rollout.weight_sync == "broadcast" and self.colocated:
            raise ConfigError("rollout.weight_sync=broadcast needs placement.mode=split on a cluster with GPUs: "
                              "NCCL cannot put two ranks (trainer rank 0 and an engine) on one shared GPU")

    @classmethod
    def of(cls, cfg: RunConfig, gpus: float) -> "Placement":
        """The placement of a whole run config (its placement, rollout and training sections)."""
        return cls(cfg.placement, cfg.rollout, cfg.training, gpus)

    def check_resources(self, total: dict, free: dict, wait: bool) -> bool:
        """Fail at once when the whole cluster (`total`) can never hold the run, unless `wait` (an autoscaling
        cluster); say so when what is `free` now is short (the placement groups then wait up to the timeout).
        Returns whether what is free now holds the whole run (engines and trainer ranks at once)."""
        if warning := self.tp_node_warning():
            print(f"[east-ds] warning: {warning}", flush=True)
        if note := check_fit(self.needs, total, free, wait, self.timeout, "this run"):
            print(note, flush=True)
            return False
        return True

    def tp_node_warning(self, gpus_per_node: Mapping[str, float] | None = None) -> str:
        """'' unless, on a cluster with GPUs, some engine's TP workers cannot all sit on one node
        (device_plan.tp_node_shortfall over `gpus_per_node`, default: what the alive nodes advertise)."""
        if not self.gpus or self.tensor_parallel_size <= 1:
            return ""
        if gpus_per_node is None:
            import ray

            if not ray.is_initialized():
                return ""
            gpus_per_node = node_gpus()
        from east_ds.cluster.device_plan import tp_node_shortfall

        return tp_node_shortfall(gpus_per_node, self.num_engines, self.tensor_parallel_size)

    def rollout_config(self, cfg):
        """Colocated engines must be able to sleep (vLLM's enable_sleep_mode)."""
        return dataclasses.replace(cfg, enable_sleep=True) if self.colocated else cfg

    def engine_options(self) -> dict:
        """EnginePool keyword arguments."""
        return {"gpu_share": self.SHARE if self.colocated else 1.0, "need": self.needs[0] if self.gpus else None,
                "schedule_timeout_s": self.timeout}

    def trainer_options(self, engines_placement_group: Any = None) -> dict:
        """TrainerGroup keyword arguments; colocated ranks sit on the engines' placement group (given)."""
        if self.colocated:
            shared = Need("trainer ranks (on the engines' bundles)",
                          [{"GPU": self.SHARE, "CPU": float(self.rank_cpus)}] * self.ranks, "")
            return {"num_gpus_per_rank": self.SHARE, "placement_group": engines_placement_group, "need": shared,
                    "schedule_timeout_s": self.timeout, "num_cpus_per_rank": self.rank_cpus}
        return {"num_gpus_per_rank": 1 if self.gpus else 0, "need": self.needs[-1],
                "schedule_timeout_s": self.timeout, "num_cpus_per_rank": self.rank_cpus}



def sleep_for_training(engines, placement: Placement) -> bool:
    """Colocated engines free their GPUs for the trainer (device_plan.sleep_plan's level); True when they slept.
    (The driver takes these steps one by one, visibly, in its loop; the smoke check and bench use these.)"""
    if placement.colocated:
        engines.sleep()
    return placement.colocated


def wake_around(engines, asleep: bool, update: Callable[[], object]) -> None:
    """Run `update` (load weights into the engines); engines that slept wake around it in device_plan.sleep_plan's
    order: the weights' memory first, the KV cache once the new weights are in."""
    if asleep:
        engines.wake(["weights"])
    update()
    if asleep:
        engines.wake(["kv_cache"])
