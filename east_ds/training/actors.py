"""Training ranks as Ray actors, so the iteration driver owns training without a separate launcher.

    group = TrainerGroup(model_path, train_cfg, model_cfg, num_ranks=2, num_gpus_per_rank=0)
    group.reference_logprobs(examples_path, out_path)   # DPO/KTO: writes examples + reference columns
    group.fit(examples_path, out_dir, resume=True)      # out_dir/ds_checkpoint, out_dir/hf, out_dir/metrics.jsonl
    group.set_model_path(out_dir + "/hf")                # next iteration starts from this export
    group.shutdown()

One actor per rank. Rank 0 opens the group's TCP store on a port the OS picks and publishes its address; every
actor sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and joins one process group (gloo on CPU, nccl
on GPU) that lives as long as the actor. Each call builds a fresh DeepSpeed engine from `model_path` (reloaded
every call, nothing kept in memory between calls), so the driver passes the previous iteration's HF export as the
next model_path.
Each method returns rank 0's metrics dict.
"""

from __future__ import annotations

import os
import socket
import time

import ray

from east_ds.cluster.device_plan import rank_thread_env
from east_ds.cluster.placement import Need, wait_placement_group, wait_scheduled
from east_ds.config import ModelConfig, TrainConfig, check_batch_sizes
from east_ds.training.divergence import TrainingDiverged


@ray.remote
class TrainRank:
    """One training rank. Everything heavy is imported inside the actor."""

    def __init__(self, rank: int, world_size: int, local_rank: int, threads: int | None = None):
        """`local_rank`: the CUDA device index when Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPU (0);
        under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES the GPU Ray assigned (device_plan.trainer_local_rank).
        `threads`: torch's intra-op threads (an offloading rank's CPUs; its OMP_NUM_THREADS says the same)."""
        from east_ds.cluster.device_plan import trainer_local_rank

        self.rank, self.world = rank, world_size
        self.local_rank = trainer_local_rank(os.environ, ray.get_gpu_ids(), default=local_rank)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.started_at = time.time()  # wall clock, for placement.json: when this rank's process was up
        self._events: list[dict] = []
        self._store = None  # rank 0's TCP store of the process group (open_store)
        self._weight_socket = None  # rank 0's listening socket for the next weight-broadcast group (master)

    def where(self) -> dict:
        """Where Ray put this rank, seen from inside it (cluster.actor_location), and its process-group backend."""
        import torch.distributed as dist

        from east_ds.cluster.placement import actor_location

        backend = dist.get_backend() if dist.is_initialized() else None
        return {"rank": self.rank, "local_rank": self.local_rank, "backend": backend, "started_at": self.started_at,
                **actor_location()}

    def device_memory(self) -> dict:
        """This rank's GPU memory in bytes (cluster.device_memory); {} without CUDA."""
        from east_ds.cluster.placement import device_memory

        return device_memory()

    def drain_events(self) -> list[dict]:
        """Start and end times of the calls since the last drain, oldest first."""
        out, self._events = self._events, []
        return out

    def _timed(self, name: str, fn, *args, **kwargs):
        self._events.append({"t": time.time(), "actor": f"rank {self.rank}", "event": f"{name} start"})
        try:
            return fn(*args, **kwargs)
        finally:
            self._events.append({"t": time.time(), "actor": f"rank {self.rank}", "event": f"{name} end"})

    def master(self) -> tuple[str, int]:
        """Rank 0: open a listening socket on a port the OS picks, for the weight-broadcast group's store, and
        return where it listens. `send_weights` hands the socket to vLLM's StatelessProcessGroup (listen_socket),
        so the port is held from pick to use and no other process can take it in between."""
        addr = ray.util.get_node_ip_address()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 0))
        s.listen()
        self._weight_socket = s
        return addr, s.getsockname()[1]

    def open_store(self) -> tuple[str, int]:
        """Rank 0: start the process group's TCP store on a port the OS picks, and return where it listens. The
        port is bound before anyone hears of it, so no other process can take it between pick and bind."""
        import torch.distributed as dist

        addr = ray.util.get_node_ip_address()
        self._store = dist.TCPStore(addr, 0, self.world, is_master=True, wait_for_workers=False)
        return addr, self._store.port

    def init_group(self, addr: str, port: int) -> int:
        """Join the process group whose store rank 0 opened at addr:port (`open_store`)."""
        import torch
        import torch.distributed as dist

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), LOCAL_RANK=str(self.local_rank),
                          MASTER_ADDR=addr, MASTER_PORT=str(port))
        if torch.cuda.is_available():  # the group's NCCL collectives and DeepSpeed's device: this rank's GPU
            torch.cuda.set_device(self.local_rank)
        from east_ds.training import engine as te
        store = self._store if self.rank == 0 else dist.TCPStore(addr, port, self.world, is_master=False)
        rank, _ = te.init_distributed(store)
        return rank

    def reference_logprobs(self, model_path, train_cfg, model_cfg, examples_path, out_path, nll=False) -> dict:
        from east_ds.training import engine as te
        return self._timed("nll" if nll else "reference", te.reference_logprobs, model_path, train_cfg, model_cfg,
                           examples_path, out_path, nll=nll)

    def fit(self, model_path, train_cfg, model_cfg, examples_path, out_dir, resume) -> dict:
        from east_ds.training import engine as te
        return self._timed("fit", te.fit, model_path, train_cfg, model_cfg, examples_path, out_dir, resume=resume,
                           progress=self.rank == 0)

    def plain_steps(self, model_path, train_cfg, model_cfg, examples_path, steps) -> dict:
        from east_ds.training.plain import plain_steps
        return plain_steps(model_path, train_cfg, model_cfg, examples_path, steps)

    def weight_metas(self, checkpoint: str, bucket_bytes: int) -> list:
        """The buckets' `(name, dtype, shape)` lists that `send_weights` will broadcast, in order (from the
        safetensors headers: no tensor is read)."""
        from east_ds.cluster.weight_sync import checkpoint_metas

        return checkpoint_metas(checkpoint, bucket_bytes)

    def send_weights(self, host: str, port: int, world_size: int, checkpoint: str, bucket_bytes: int) -> dict:
        """Be rank 0 of the weight-broadcast group at host:port and broadcast the checkpoint bucket by bucket;
        returns the seconds and the transport the group used ("nccl" or "tcp-store")."""
        from east_ds.cluster.weight_sync import TrainerWeightBroadcaster, checkpoint_tensors, iter_buckets

        t0 = time.perf_counter()
        listen, self._weight_socket = self._weight_socket, None  # the group's store takes the socket over
        sender = TrainerWeightBroadcaster(host, port, world_size, listen_socket=listen)
        for bucket in iter_buckets(checkpoint_tensors(checkpoint), bucket_bytes):
            sender.broadcast(bucket)
        sender.finish()
        return {"seconds": time.perf_counter() - t0, "kind": sender.comm.kind}

    def close(self) -> None:
        from east_ds.training import engine as te
        te.shutdown_distributed()


class TrainerGroup:
    """`num_ranks` TrainRank actors forming one data-parallel DeepSpeed job (ray must be initialised)."""

    def __init__(self, model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, num_ranks: int,
                 num_gpus_per_rank: float = 0, placement_group=None, need: Need | None = None,
                 schedule_timeout_s: float = 300.0, resources: dict | None = None, num_cpus_per_rank: int = 1):
        """Where the ranks go:
        - `placement_group` (colocated placement): rank r on bundle r of that group (the engines'), taking
          `num_gpus_per_rank` of its GPU, so the trainer shares the GPUs the rollout engines hold;
        - else `need` with a strategy (split placement): a placement group of `need.bundles` of its own, rank r
          on bundle r, removed at shutdown;
        - else plain actors of one CPU and `num_gpus_per_rank` GPUs.
        A placement group or rank not scheduled within `schedule_timeout_s` raises cluster.SchedulingTimeout
        (naming `need`, what was asked) after killing what was started. `resources`: custom Ray resources each
        rank asks for (placement.trainer_resources; part of `need`'s bundles when the ranks have a placement group
        of their own); ranks on the engines' bundles ask for none. `num_cpus_per_rank`: each rank's CPUs and
        threads (cluster.Placement.rank_cpus: more than one when the optimizer is offloaded)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.model_path, self.train_cfg, self.model_cfg = model_path, train_cfg, model_cfg
        check_batch_sizes(train_cfg, num_ranks)  # fail before starting actors
        opts: dict = {"num_cpus": num_cpus_per_rank, "num_gpus": num_gpus_per_rank}
        if thread_env := rank_thread_env(num_cpus_per_rank):  # Ray's own OMP_NUM_THREADS may be set already
            opts["runtime_env"] = {"env_vars": thread_env}
        if resources and placement_group is None:
            opts["resources"] = dict(resources)
        rank = {"CPU": float(num_cpus_per_rank),
                **({"GPU": float(num_gpus_per_rank)} if num_gpus_per_rank else {}), **opts.get("resources", {})}
        self.need = need or Need("trainer ranks", [rank] * num_ranks, "")
        self._own_pg = None
        if placement_group is not None:
            bundles = len(placement_group.bundle_specs)
            if num_ranks > bundles:
                raise ValueError(f"colocated training needs num_ranks ({num_ranks}) <= engine GPUs ({bundles})")
        elif self.need.strategy:
            from ray.util.placement_group import placement_group as new_placement_group

            placement_group = self._own_pg = new_placement_group(self.need.bundles, strategy=self.need.strategy)
            wait_placement_group(placement_group, self.need, schedule_timeout_s)

        def options(r: int) -> dict:
            if placement_group is None:
                return opts
            return {**opts, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=r)}

        # LOCAL_RANK 0 on each actor: Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU(s) (unless told not to:
        # TrainRank then takes the GPU Ray assigned).
        threads = num_cpus_per_rank if thread_env else None
        self.actors = [TrainRank.options(**options(r)).remote(r, num_ranks, 0, threads) for r in range(num_ranks)]
        try:
            wait_scheduled([a.where.remote() for a in self.actors], self.need, schedule_timeout_s)
            addr, port = ray.get(self.actors[0].open_store.remote())
            ray.get([a.init_group.remote(addr, port) for a in self.actors])
            self.locations = ray.get([a.where.remote() for a in self.actors])  # now with the backend
        except BaseException:
            self._kill()
            raise

    def set_model_path(self, model_path: str) -> None:
        """The model the next call starts from (e.g. the previous iteration's out_dir/hf)."""
        self.model_path = model_path

    def _all(self, method: str, *args) -> dict:
        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors])[0]
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, TrainingDiverged):  # the ranks agreed to stop: its message, not a traceback
                raise e.cause from None
            raise

    def reference_logprobs(self, examples_path: str, out_path: str) -> dict:
        """Score examples with the frozen model at model_path; write them plus REFERENCE_COLUMNS to out_path."""
        return self._all("reference_logprobs", self.model_path, self.train_cfg, self.model_cfg, str(examples_path),
                         str(out_path))

    def response_nll(self, examples_path: str, out_path: str) -> dict:
        """Mean token NLL of each row's `response` under the model at model_path (SFT-shaped table); writes the
        rows plus an `nll` column to out_path. The perplexity-based baseline of docs/method.md section 4."""
        return self._all("reference_logprobs", self.model_path, self.train_cfg, self.model_cfg, str(examples_path),
                         str(out_path), True)

    def fit(self, examples_path: str, out_dir: str, resume: bool = True) -> dict:
        """Train on examples_path from model_path; see training.engine.fit for the outputs. Returns a summary."""
        return self._all("fit", self.model_path, self.train_cfg, self.model_cfg, str(examples_path), str(out_dir),
                         resume)

    def plain_steps(self, examples_path: str, steps: int) -> dict:
        """The first `steps` steps of fit's plan on examples_path as plain DeepSpeed steps (training.plain), from
        model_path; nothing is written. `east-ds bench`'s yardstick for the training step."""
        return self._all("plain_steps", self.model_path, self.train_cfg, self.model_cfg, str(examples_path), steps)

    @property
    def sender(self):
        """Trainer rank 0's actor: the sending end of a weight broadcast (cluster.weight_sync.by_broadcast)."""
        return self.actors[0]

    def device_memory(self) -> list[dict]:
        """Each rank's GPU memory in bytes (cluster.device_memory); empty dicts without CUDA."""
        return ray.get([a.device_memory.remote() for a in self.actors])

    def drain_events(self) -> list[dict]:
        """Every rank's recorded call start/end events since the last call, ordered by time."""
        return sorted((e for evs in ray.get([a.drain_events.remote() for a in self.actors]) for e in evs),
                      key=lambda e: e["t"])

    def shutdown(self) -> None:
        """Leave the process group on every rank and kill the actors."""
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=60)
        finally:
            self._kill()

    def _kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._own_pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._own_pg)
            self._own_pg = None
