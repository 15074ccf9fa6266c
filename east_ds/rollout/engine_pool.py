"""Data-parallel vLLM engines as Ray actors: placement, sharded generation with retry, live weight updates.

    pool = EnginePool(model_path, rollout_cfg, model_cfg)      # Ray must be initialised (ray_utils.init_ray)
    samples = pool.generate(prompt_token_ids, Sampling(n=4, temperature=1.0), seeds=[...])
    pool.update_weights_from_path(exported_hf_dir)             # or update_weights_from_state_dict(state_dict)
    pool.shutdown()

Placement. On GPU clusters one placement group holds `num_engines * tensor_parallel_size` single-GPU bundles,
packed per node; engine e takes bundles [e*tp, (e+1)*tp). On CPU machines engines are plain actors with one
logical CPU each, no GPUs, at most one engine per core (vLLM-CPU with a small KV-cache space). Nothing waits for
ever: a placement group or actor not scheduled within `schedule_timeout_s` raises cluster.SchedulingTimeout
naming what was asked and what is free; vLLM is built only once the actor is scheduled (no timeout on loading).

Work. Prompts are cut into shards (the unit of scheduling, retry and, in stage.py, of resume). By default each
engine holds several shards in its running batch and takes the next ones while the stragglers of older ones
decode, so its batch stays full until the last shard (rollout.feeding); results come back in prompt order. An
engine actor that dies has its shards retried on a replacement actor (same index, same seed, same weights).

Too long. A prompt with `len(prompt) + max_new_tokens > max_model_len` is not sent: its samples are recorded
with finish_reason "skipped" and a skip_reason. DECIDED: the full new-token budget must fit, so every response
that is cut short is cut by the budget ("length"), never silently by the context window.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from east_ds.cluster.placement import Need, SchedulingTimeout, cpu_engines, wait_placement_group, wait_scheduled
from east_ds.config import ModelConfig, RolloutConfig
from east_ds.data.load import check_model_path
from east_ds.cluster.ray_utils import NodeLostError
from east_ds.cluster.weight_sync import iter_buckets
from east_ds.rollout.feeding import ShardRun, feed_by_shard, feed_continuously

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    n: int = 1  # samples per prompt
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 1.0
    max_new_tokens: int = 256


def model_max_len(path: str, trust_remote_code: bool = False) -> int | None:
    """The model's context length from its config, or None when the config does not say."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = getattr(c, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def skip_record(reason: str) -> dict:
    return {"response": "", "num_tokens": 0, "finish_reason": "skipped", "skip_reason": reason, "engine": -1,
            "seconds": 0.0}


class EnginePool:
    """`cfg.num_engines` vLLM engines (Ray actors) serving one policy. See the module docstring."""

    def __init__(self, model_path: str, cfg: RolloutConfig, model_cfg: ModelConfig, gpu_share: float = 1.0,
                 need: Need | None = None, schedule_timeout_s: float = 300.0,
                 resources: Mapping[str, float] | None = None, lora_rank: int = 0):
        """`gpu_share`: the fraction of its bundle's GPU an engine actor (tensor_parallel_size 1) takes; below 1
        the trainer's ranks can be placed on the same bundles (`placement_group`) to share the GPUs.
        `need`: the bundles to reserve (cluster.placement_needs; default: one `{GPU: 1, CPU: 1}` bundle per
        engine GPU on a cluster with GPUs, plain one-CPU actors without). A placement group or engine actor not
        scheduled within `schedule_timeout_s` raises cluster.SchedulingTimeout, after cleaning up.
        `resources`: custom Ray resources each engine actor asks for (placement.engine_resources), e.g.
        {"node_b": 1} to keep the engines on the nodes started with that resource. `lora_rank` > 0
        (training.lora.r): the engines serve LoRA adapters of that rank on `model_path`, the base model; they
        serve the base until the first `load_adapter*`."""
        import ray

        check_model_path(model_path)  # before any actor starts
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call east_ds.cluster.ray_utils.init_ray() first")
        self.model_path = str(model_path)
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.lora_rank = lora_rank
        limit = model_max_len(self.model_path, model_cfg.trust_remote_code)
        self.max_model_len = min(cfg.max_model_len, limit) if limit else cfg.max_model_len
        # Ray's accounting decides the placement (GPU bundles or plain CPU actors); whether an engine runs on a
        # GPU (sleep mode, NCCL) is decided inside the engine by its own device (LLMEngine.on_gpu).
        self.gpu_bundles = ray.cluster_resources().get("GPU", 0) > 0
        n = cfg.num_engines
        if not self.gpu_bundles:  # a core per engine, and per TP worker of an engine
            if n > (cores := cpu_engines(n, cfg.tensor_parallel_size)):
                log.warning("num_engines=%d x tensor_parallel_size=%d > %d cores: using %d vLLM-CPU engines", n,
                            cfg.tensor_parallel_size, os.cpu_count() or 1, cores)
                n = cores
        self.num_engines = n
        self.serving = n  # shards go to engines 0 .. serving-1 (serve_from)
        tp = cfg.tensor_parallel_size
        self.resources = dict(resources or {})
        self.need = need or (Need("rollout engines", [{"GPU": 1.0, "CPU": 1.0, **self.resources}] * (n * tp), "PACK")
                             if self.gpu_bundles else Need("rollout engines", [{"CPU": 1.0, **self.resources}] * n, ""))
        self.schedule_timeout_s = schedule_timeout_s
        self.gpu_share = gpu_share
        self._pg = None
        if self.need.strategy:
            from ray.util.placement_group import placement_group

            self._pg = placement_group(self.need.bundles, strategy=self.need.strategy)
            wait_placement_group(self._pg, self.need, schedule_timeout_s)
        self._bundles = self._assign_bundles(n, tp) if self._pg is not None and self.gpu_bundles else None
        self._weights: tuple[str, Any] = ("path", None)  # what a replacement actor must load: original weights
        self._generation = [0] * n  # bumped when engine i is replaced
        self.engines: list = []
        self.locations: list[dict] = [{} for _ in range(n)]  # where each engine landed, seen from inside it
        try:
            self.engines = self._start_actors(range(n))
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------------------------------------------------
    # Actors

    def _start_actors(self, indices: Iterable[int], poll: Callable[[], None] | None = None) -> list:
        """Start engine actors `indices`: wait (at most schedule_timeout_s) until each is scheduled, then build
        vLLM in all of them and load the current weights. Returns the actors in order. `poll` is called every few
        seconds while they wait to be scheduled; it raises to give up early."""
        import ray

        indices = list(indices)
        actors = [self._new_actor(i) for i in indices]
        try:
            where = wait_scheduled([a.where.remote() for a in actors], self.need, self.schedule_timeout_s, poll)
            built = ray.get([a.build.remote() for a in actors])
            kind, source = self._weights
            if kind == "path" and source is not None:
                ray.get([a.update_weights_from_path.remote(source) for a in actors])
            elif kind == "refs":
                ray.get([a.update_weights_from_refs.remote(*source) for a in actors])
            elif kind == "adapter":
                ray.get([a.load_adapter.remote(source) for a in actors])
            elif kind == "adapter_refs":
                ray.get([a.load_adapter_from_refs.remote(*source) for a in actors])
        except BaseException:
            for a in actors:
                ray.kill(a)
            raise
        for i, w, b in zip(indices, where, built):
            self.locations[i] = {**w, **b, "bundle": self._bundles[i][0] if self._bundles else None,
                                 "bundles": self._bundles[i] if self._bundles else None}
        return actors

    def _assign_bundles(self, n: int, tp: int) -> list[list[int]]:
        """Each engine's bundles, its TP workers on one node where the nodes allow (device_plan.engine_bundles:
        Ray's PACK does not keep consecutive bundle indices on one node); an engine that must span nodes is
        logged by index."""
        from east_ds.cluster.device_plan import engine_bundles, engines_across_nodes
        from east_ds.cluster.placement import bundle_nodes

        nodes = bundle_nodes(self._pg)
        assignment = engine_bundles(nodes, n, tp)
        if spanning := engines_across_nodes(assignment, nodes):
            log.warning("engines %s run their tensor-parallel workers across nodes: the nodes' free GPUs do not "
                        "hold whole engines (all-reduce over the network)", spanning)
        return assignment

    def _new_actor(self, i: int):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from east_ds.cluster.device_plan import engine_actor_plan
        from east_ds.rollout.vllm_engine import PlacedLLMEngine

        cfg = self.cfg
        plan = engine_actor_plan(i, cfg.tensor_parallel_size, self._pg is not None, self.gpu_share, os.environ,
                                 bundles=self._bundles[i] if self._bundles else None)
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0, "num_cpus": plan.num_cpus,
                                   "num_gpus": plan.num_gpus}
        if plan.bundle_index is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self._pg,
                placement_group_bundle_index=plan.bundle_index,
                placement_group_capture_child_tasks=True,  # TP > 1: vLLM's Ray workers land in this group
            )
        if self.resources:
            options["resources"] = self.resources
        actor_cls = ray.remote(PlacedLLMEngine).options(runtime_env={"env_vars": plan.env}, **options)
        return actor_cls.remote(
            self.model_path,
            engine_index=i,
            seed=cfg.seed + i,
            dtype=self.model_cfg.dtype,
            max_model_len=self.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enable_sleep=cfg.enable_sleep,
            trust_remote_code=self.model_cfg.trust_remote_code,
            colocated=self.gpu_share < 1,
            max_num_seqs=cfg.max_num_seqs,
            lora_rank=self.lora_rank,
        )

    def _replace_actor(self, i: int) -> None:
        import ray

        log.warning("engine %d died; starting a replacement", i)
        try:
            ray.kill(self.engines[i])
        except Exception:
            pass
        self._generation[i] += 1
        try:
            # While the replacement waits to be placed, the old node may be declared dead; if no live node has the
            # engines' custom resources, it could only wait for that node to return.
            [self.engines[i]] = self._start_actors(
                [i], poll=lambda: self._check_node_alive(i, "the replacement engine cannot be placed", pending=True))
        except (ray.exceptions.RayActorError, SchedulingTimeout) as e:  # e.g. placed on the dying node
            self._check_node_alive(i, e)
            raise

    def drain_events(self) -> list[dict]:
        """Every engine's recorded sleep/wake/update events since the last call, ordered by time."""
        import ray

        return sorted((e for evs in ray.get([a.drain_events.remote() for a in self.engines]) for e in evs),
                      key=lambda e: e["t"])

    def _check_node_alive(self, i: int, error: Exception | str, pending: bool = False) -> None:
        """Raise NodeLostError when engine i's node is dead. `pending` (a replacement still waits to be placed):
        only when, besides, the engines ask for custom resources that no live node offers, so that the replacement
        could only wait for the lost node to return."""
        import ray

        node = self.locations[i].get("node_id")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if node is None or any(n["NodeID"] == node for n in nodes):
            return
        if pending and (not self.resources or any(set(self.resources) <= set(n["Resources"]) for n in nodes)):
            return
        raise NodeLostError(
            f"engine {i} was lost with its Ray node {node} ({self.locations[i].get('node_ip', '?')}), which is no "
            f"longer alive; finished rollout shards are on disk: rerun the same command once the node is back "
            f"(last error: {str(error).splitlines()[0]})") from (error if isinstance(error, Exception) else None)

    # ------------------------------------------------------------------------------------------------------------
    # Generation

    def fits(self, prompt_len: int, max_new_tokens: int) -> str:
        """'' when the prompt fits, else the skip reason."""
        if prompt_len + max_new_tokens > self.max_model_len:
            return (f"prompt has {prompt_len} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                    f"max_model_len={self.max_model_len}")
        return ""

    @contextlib.contextmanager
    def serve_from(self, k: int):
        """Within the block, shards go to the first `k` engines only (at most all of them); the others stay up.
        `east-ds bench` measures each smaller engine count on the largest count's pool instead of restarting."""
        if k < 1:
            raise ValueError(f"serve_from needs at least one engine, got {k}")
        before, self.serving = self.serving, min(k, self.num_engines)
        try:
            yield self.serving
        finally:
            self.serving = before

    def run_shards(
        self,
        shards: Sequence[tuple[Any, list[dict]]],
        on_done: Callable[[Any, list[list[dict]]], None] | None = None,
        desc: str | None = None,
    ) -> dict[Any, list[list[dict]]]:
        """Run `(key, requests)` shards on the engines; return {key: per-request sample records}.

        Requests are as in `LLMEngine.generate`; each sample record gains `engine` and `seconds` (the engine's wall
        time from taking the shard to finishing it). `on_done(key, records)` is called as each shard finishes (in
        completion order). A shard whose engine dies is retried on a replacement, at most `max_shard_retries`
        times; other errors propagate. `rollout.feed` decides how shards reach an engine (rollout.feeding).
        """
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(r) for _, r in shards), desc=desc or "prompts", unit="prompt",
                   disable=os.environ.get("EAST_DS_NO_TQDM") == "1")
        run = ShardRun(self, deque(shards), on_done, bar)
        try:
            (feed_by_shard if self.cfg.feed == "shard" else feed_continuously)(run)
        finally:
            bar.close()
        return run.out

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: Sampling,
        seeds: Sequence[int | None] | None = None,
        desc: str | None = None,
    ) -> list[list[dict]]:
        """Sample `sampling.n` responses per prompt; return, in prompt order, a list of n sample records each.

        A record is {response, num_tokens, finish_reason, skip_reason, engine, seconds}. `seeds[i]` fixes prompt
        i's samples whichever engine runs it; None leaves them to the engine's own seed.
        """
        seeds = list(seeds) if seeds is not None else [None] * len(prompt_token_ids)
        results: list[list[dict] | None] = [None] * len(prompt_token_ids)
        todo = []
        for i, ids in enumerate(prompt_token_ids):
            reason = self.fits(len(ids), sampling.max_new_tokens)
            if reason:
                results[i] = [skip_record(reason) for _ in range(sampling.n)]
            else:
                todo.append(i)
        size = max(1, self.cfg.shard_size)
        shards = [(k, [self.request(prompt_token_ids[i], sampling, seeds[i]) for i in todo[k:k + size]])
                  for k in range(0, len(todo), size)]
        done = self.run_shards(shards, desc=desc)
        for k, _ in shards:
            for i, recs in zip(todo[k:k + size], done[k]):
                results[i] = recs
        return results  # type: ignore[return-value]

    @staticmethod
    def request(ids: Sequence[int], sampling: Sampling, seed: int | None) -> dict:
        return {"prompt_token_ids": list(ids), "n": sampling.n, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "seed": seed}

    # ------------------------------------------------------------------------------------------------------------
    # Weight updates (prefix caches are reset by the engines after each)

    def update_weights_from_path(self, path: str) -> dict:
        """Load the HF checkpoint at `path` (exported by the trainer) into every running engine."""
        import ray

        check_model_path(str(path))
        t0 = time.perf_counter()
        ray.get([e.update_weights_from_path.remote(str(path)) for e in self.engines])
        self._weights = ("path", str(path))
        return {"seconds": time.perf_counter() - t0}

    def update_weights_from_state_dict(
        self, state_dict: Mapping[str, Any] | Iterable[tuple[str, Any]], bucket_mb: int | None = None
    ) -> dict:
        """Send weights (HF names -> tensors) through Ray's object store in buckets of at most `bucket_mb` MiB.

        Every engine reads the same objects (one copy per node). Each engine unpacks one bucket at a time inside a
        single in-place reload. The last update's buckets stay referenced so that a replacement actor can load
        them; they are released by the next update or `shutdown`.
        """
        import ray

        items = state_dict.items() if isinstance(state_dict, Mapping) else state_dict
        bucket_bytes = (bucket_mb or self.cfg.weight_bucket_mb) * 2**20
        t0 = time.perf_counter()
        refs, nbytes = [], 0
        for bucket in iter_buckets(items, bucket_bytes):
            nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
            refs.append(ray.put(bucket))
        ray.get([e.update_weights_from_refs.remote(refs, nbytes) for e in self.engines])
        self._weights = ("refs", (refs, nbytes))
        return {"seconds": time.perf_counter() - t0, "buckets": len(refs), "bytes": nbytes}

    # Broadcast from trainer rank 0 (NCCL between GPUs, a TCP-store stand-in without CUDA): one group per update.

    def init_weight_group(self, host: str, port: int) -> tuple[list, int]:
        """Start every engine joining rank 0's weight-broadcast group; returns (refs to wait on, world size).

        Trainer rank 0 creates `vllm_engine.TrainerWeightBroadcaster(host, port, world_size)` concurrently (see
        TrainerGroup.broadcast_weights); everyone blocks until all have joined.
        """
        tp = self.cfg.tensor_parallel_size
        world = 1 + self.num_engines * tp
        refs = [e.init_weight_group.remote(host, port, 1 + i * tp, world) for i, e in enumerate(self.engines)]
        return refs, world

    def update_weights_broadcast(self, buckets_meta: list, path: str) -> list:
        """Ask every engine to receive buckets described by `buckets_meta` (weight_sync.bucket_meta of each);
        returns refs to wait on after rank 0 has broadcast every bucket in order. `path`: the same weights on
        storage, what a replacement engine loads (it was not in the group)."""
        self._weights = ("path", str(path))
        return [e.update_weights_broadcast.remote(buckets_meta) for e in self.engines]

    # LoRA adapters (training.lora): the engines keep their base weights and serve the adapter loaded last.

    def load_adapter(self, path: str) -> dict:
        """Every engine serves the peft adapter directory at `path` (on storage they share) from now on."""
        import ray

        t0 = time.perf_counter()
        ray.get([e.load_adapter.remote(str(path)) for e in self.engines])
        self._weights = ("adapter", str(path))
        return {"seconds": time.perf_counter() - t0}

    def load_adapter_from_state_dict(self, items: Iterable[tuple[str, Any]], config: dict,
                                     bucket_mb: int | None = None) -> dict:
        """Send an adapter's `(name, tensor)` pairs through Ray's object store in buckets of at most `bucket_mb`
        MiB, with its peft `config`; every engine loads it. The buckets stay referenced for a replacement actor,
        as in update_weights_from_state_dict."""
        import ray

        t0 = time.perf_counter()
        refs, nbytes, tensors = [], 0, 0
        for bucket in iter_buckets(items, (bucket_mb or self.cfg.weight_bucket_mb) * 2**20):
            nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
            tensors += len(bucket)
            refs.append(ray.put(bucket))
        ray.get([e.load_adapter_from_refs.remote(refs, config, nbytes) for e in self.engines])
        self._weights = ("adapter_refs", (refs, config, nbytes))
        return {"seconds": time.perf_counter() - t0, "buckets": len(refs), "bytes": nbytes, "tensors": tensors}

    def update_adapter_broadcast(self, buckets_meta: list, path: str, config: dict) -> list:
        """As update_weights_broadcast, for an adapter: every engine's workers receive its tensors and load them
        with `config`; returns refs to wait on. `path`: the adapter on storage, for a replacement engine."""
        self._weights = ("adapter", str(path))
        return [e.load_adapter_broadcast.remote(buckets_meta, config) for e in self.engines]

    # ------------------------------------------------------------------------------------------------------------
    # GPU sharing and teardown

    @property
    def placement_group(self):
        """The engines' placement group on GPU machines (one GPU bundle per engine GPU), else None."""
        return self._pg

    def sleep(self) -> None:
        """Free GPU memory for the trainer (device_plan.sleep_plan's level). A no-op on CPU or when enable_sleep
        is off."""
        import ray

        ray.get([e.sleep.remote() for e in self.engines])

    def wake(self, tags: list[str] | None = None) -> None:
        """Take GPU memory back: `tags` ["weights"] or ["kv_cache"] for one part, None for all."""
        import ray

        ray.get([e.wake.remote(tags) for e in self.engines])

    def device_memory(self) -> list[list[dict]]:
        """Per engine, per worker: GPU memory in bytes (cluster.device_memory); empty dicts without CUDA."""
        import ray

        return ray.get([e.device_memory.remote() for e in self.engines])

    @property
    def on_gpu(self) -> bool:
        """Whether the engines run on CUDA devices (seen from inside them when they were built)."""
        return any(loc.get("on_gpu") for loc in self.locations)

    def shutdown(self) -> None:
        import ray

        try:  # a clean vLLM teardown first (TP > 1 on the CPU: worker processes, shared memory); dead ones skipped
            ray.get([e.close.remote() for e in self.engines], timeout=60)
        except Exception:
            pass
        for e in self.engines:
            try:
                ray.kill(e)
            except Exception:
                pass
        self.engines = []
        self._weights = ("path", None)
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._pg)
            self._pg = None

