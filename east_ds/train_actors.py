"""Training ranks as Ray actors, so the iteration driver owns training without a separate launcher.

    group = TrainerGroup(model_path, train_cfg, model_cfg, num_ranks=2, num_gpus_per_rank=0)
    group.reference_logprobs(examples_path, out_path)   # DPO/KTO: writes examples + reference columns
    group.fit(examples_path, out_dir, resume=True)      # out_dir/ds_checkpoint, out_dir/hf, out_dir/metrics.jsonl
    group.set_model_path(out_dir + "/hf")                # next iteration starts from this export
    group.shutdown()

One actor per rank. Rank 0 picks MASTER_ADDR/PORT and publishes them; every actor sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT and joins one process group (gloo on CPU, nccl on GPU) that lives as long
as the actor. Each call builds a fresh DeepSpeed engine from `model_path` (reloaded every call, nothing kept
in memory between calls), so the driver passes the previous iteration's HF export as the next model_path.
Each method returns rank 0's metrics dict.
"""

from __future__ import annotations

import os
import socket

import ray

from east_ds.config import ModelConfig, TrainConfig, check_batch_sizes


@ray.remote
class TrainRank:
    """One training rank. Everything heavy is imported inside the actor."""

    def __init__(self, rank: int, world_size: int, local_rank: int):
        self.rank, self.world, self.local_rank = rank, world_size, local_rank

    def master(self) -> tuple[str, int]:
        """Address and a free port of this actor's node (called on rank 0)."""
        addr = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((addr, 0))
            return addr, s.getsockname()[1]

    def init_group(self, addr: str, port: int) -> int:
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), LOCAL_RANK=str(self.local_rank),
                          MASTER_ADDR=addr, MASTER_PORT=str(port))
        from east_ds import train_engine as te

        rank, _ = te.init_distributed()
        return rank

    def reference_logprobs(self, model_path, train_cfg, model_cfg, examples_path, out_path, nll=False) -> dict:
        from east_ds import train_engine as te

        return te.reference_logprobs(model_path, train_cfg, model_cfg, examples_path, out_path, nll=nll)

    def fit(self, model_path, train_cfg, model_cfg, examples_path, out_dir, resume) -> dict:
        from east_ds import train_engine as te

        return te.fit(model_path, train_cfg, model_cfg, examples_path, out_dir, resume=resume,
                      progress=self.rank == 0)

    def close(self) -> None:
        from east_ds import train_engine as te

        te.shutdown_distributed()


class TrainerGroup:
    """`num_ranks` TrainRank actors forming one data-parallel DeepSpeed job (ray must be initialised)."""

    def __init__(self, model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, num_ranks: int,
                 num_gpus_per_rank: float = 0, placement_group=None, resources: dict | None = None):
        """`placement_group` (colocated placement): rank r is scheduled on bundle r of that group, taking
        `num_gpus_per_rank` of its GPU, so the trainer shares the GPUs the rollout engines hold. `resources`:
        custom Ray resources each rank asks for (placement.trainer_resources)."""
        self.model_path, self.train_cfg, self.model_cfg = model_path, train_cfg, model_cfg
        check_batch_sizes(train_cfg, num_ranks)  # fail before starting actors
        opts = {"num_cpus": 1, "num_gpus": num_gpus_per_rank}
        if resources and placement_group is None:  # colocated ranks go where the engines' bundles are
            opts["resources"] = dict(resources)
        if placement_group is not None:
            bundles = len(placement_group.bundle_specs)
            if num_ranks > bundles:
                raise ValueError(f"colocated training needs num_ranks ({num_ranks}) <= engine GPUs ({bundles})")

        def options(r: int) -> dict:
            if placement_group is None:
                return opts
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            return {**opts, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=r)}

        # LOCAL_RANK 0 on each actor: Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU(s).
        self.actors = [TrainRank.options(**options(r)).remote(r, num_ranks, 0) for r in range(num_ranks)]
        addr, port = ray.get(self.actors[0].master.remote())
        ray.get([a.init_group.remote(addr, port) for a in self.actors])

    def set_model_path(self, model_path: str) -> None:
        """The model the next call starts from (e.g. the previous iteration's out_dir/hf)."""
        self.model_path = model_path

    def _all(self, method: str, *args) -> dict:
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])[0]

    def reference_logprobs(self, examples_path: str, out_path: str) -> dict:
        """Score examples with the frozen model at model_path; write them plus REFERENCE_COLUMNS to out_path."""
        return self._all("reference_logprobs", self.model_path, self.train_cfg, self.model_cfg, str(examples_path),
                         str(out_path))

    def response_nll(self, examples_path: str, out_path: str) -> dict:
        """Mean token NLL of each row's `response` under the model at model_path (SFT-shaped table); writes the
        rows plus an `nll` column to out_path. The perplexity-based baseline of EAST.md section 3."""
        return self._all("reference_logprobs", self.model_path, self.train_cfg, self.model_cfg, str(examples_path),
                         str(out_path), True)

    def fit(self, examples_path: str, out_dir: str, resume: bool = True) -> dict:
        """Train on examples_path from model_path; see train_engine.fit for the outputs. Returns a summary."""
        return self._all("fit", self.model_path, self.train_cfg, self.model_cfg, str(examples_path), str(out_dir),
                         resume)

    def shutdown(self) -> None:
        """Leave the process group on every rank and kill the actors."""
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=60)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
