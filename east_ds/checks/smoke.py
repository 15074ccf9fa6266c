"""`east-ds check CONFIG --smoke`: each GPU path of east_ds, run once on this node with tiny models, one row each.

    split + broadcast        an engine and a trainer rank on GPUs of their own; rank 0 broadcasts new weights
                             (NCCL between GPUs); greedy output then equals a reload of the same weights from disk
    colocated sleep/wake     engine and rank share a GPU: sleep, one DeepSpeed step, wake weights, load the trained
                             weights, wake the KV cache, generate; GPU memory recorded around each step
    tensor parallel 2        one engine over two GPUs (vLLM's Ray executor) generates; says whether its greedy
                             output equals the one-GPU engine's (split row) before and after a weight update
    object_store + TP 2      that engine loads weights from Ray's object store; equals a reload from disk
    eager vs CUDA graphs     rollout throughput of the same engine with and without CUDA graphs

A path the node cannot take (too few GPUs, no CUDA) is skipped with the reason. On a CPU machine the same paths
run on logical GPUs (`--logical-gpus 2`: a local Ray advertising two GPUs; the engines and ranks run on the CPU,
the broadcast over its TCP-store stand-in); that is how this command is tested. Exit status 1 when a row fails.
The config supplies model.dtype, model.trust_remote_code, placement.ray_address and the DeepSpeed config; its
model and data are not read.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from east_ds.cluster.placement import sleep_for_training, wake_around
from east_ds.config import RunConfig

PROMPTS = ["What is 2 + 3?", "Count to five.", "Name a prime number.", "What is 7 times 6?"]


@dataclass
class Row:
    path: str
    status: str  # passed / FAILED / skipped
    seconds: float
    detail: str


def _fmt_mem(mems: list[dict]) -> str:
    """'3.1/80.0 GB free' over the devices measured, or 'no CUDA'."""
    mems = [m for m in mems if m]
    if not mems:
        return "no CUDA"
    free, total = sum(m["free"] for m in mems), sum(m["total"] for m in mems)
    return f"{free / 1e9:.1f}/{total / 1e9:.1f} GB free"


class Smoke:
    """The five paths, each a method returning the row's detail (or raising)."""

    def __init__(self, cfg: RunConfig, work: Path, gpus: float, on_gpu: bool):
        from east_ds.data.tiny import build_tiny_model

        self.cfg, self.work, self.gpus, self.on_gpu = cfg, work, gpus, on_gpu
        self.model_a = build_tiny_model(work / "model_a", seed=0)
        self.model_b = build_tiny_model(work / "model_b", seed=1)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.model_a))
        self.prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]

    # -- helpers -------------------------------------------------------------------------------------------------
    def _run_cfg(self, mode: str, engines: int = 1, tp: int = 1, **rollout) -> RunConfig:
        c = self.cfg
        return dataclasses.replace(
            c, placement=dataclasses.replace(c.placement, mode=mode, engine_resources={}, trainer_resources={}),
            rollout=dataclasses.replace(c.rollout, num_engines=engines, tensor_parallel_size=tp, max_model_len=256,
                                        shard_size=64, **rollout),
            training=dataclasses.replace(c.training, num_ranks=1, global_batch_size=2, micro_batch_size=1,
                                         gradient_accumulation_steps=2, epochs=1, max_steps=1, save_every_steps=0,
                                         gradient_checkpointing=False, max_len=64, max_prompt_len=32, loss="sft"))

    def _pool(self, run: RunConfig, placement, model: Path):
        from east_ds.rollout.engine_pool import EnginePool

        return EnginePool(str(model), placement.rollout_config(run.rollout), run.model, **placement.engine_options())

    def _greedy(self, pool, n: int = 1, tokens: int = 16) -> list[str]:
        from east_ds.rollout.engine_pool import Sampling

        out = pool.generate(self.prompts, Sampling(n=n, temperature=0.0, max_new_tokens=tokens))
        return [s["response"] for samples in out for s in samples]

    def _placement(self, run: RunConfig):
        from east_ds.cluster.placement import Placement

        return Placement.of(run, self.gpus)

    # -- the paths -----------------------------------------------------------------------------------------------
    def split_broadcast(self) -> str:
        from east_ds.cluster.ray_utils import started
        from east_ds.cluster.weight_sync import by_broadcast
        from east_ds.training.actors import TrainerGroup

        run = self._run_cfg("split", weight_sync="broadcast")
        placement = self._placement(run)
        with ThreadPoolExecutor(2) as start:  # on GPUs of their own, the engine and the rank start side by side
            pool_start = start.submit(self._pool, run, placement, self.model_a)
            group_start = start.submit(TrainerGroup, str(self.model_a), run.training, run.model, 1,
                                       **placement.trainer_options())
        pool, group = started(pool_start), started(group_start)
        try:
            if pool is None or group is None:
                raise (pool_start.exception() or group_start.exception())
            before = self._greedy(pool)
            sent = by_broadcast(pool, group.sender, str(self.model_b), run.rollout.weight_bucket_mb)
            by_broadcast = self._greedy(pool)
            pool.update_weights_from_path(str(self.model_b))
            by_path = self._greedy(pool)
            self.tp1_outputs = {"a": before, "b": by_path}  # one engine, one GPU: the tensor-parallel row compares
        finally:
            if group is not None:
                group.shutdown()
            if pool is not None:
                pool.shutdown()
        if by_broadcast != by_path:
            raise AssertionError("greedy output after the broadcast differs from a reload of the same weights")
        if by_broadcast == before:
            raise AssertionError("the broadcast did not change the engine's output (weights not loaded)")
        kind = "nccl" if self.on_gpu else "tcp-store stand-in"
        return f"{sent['buckets']} bucket(s) over {kind} in {sent['seconds']:.2f} s; output equals a reload"

    def colocated_sleep_wake(self) -> str:
        from east_ds.tables import write_table
        from east_ds.training.actors import TrainerGroup

        run = self._run_cfg("colocated")
        placement = self._placement(run)
        pool = self._pool(run, placement, self.model_a)
        examples = self.work / "sft_examples.parquet"
        write_table(pd.DataFrame({"question_id": [str(i) for i in range(4)], "prompt": PROMPTS,
                                  "response": ["5", "1 2 3 4 5", "7", "42"], "weight": [1.0, 0.5, 2.0, 1.0]}),
                    examples)
        memory: list[str] = []
        group = None

        def note(step: str) -> None:
            ranks = group.device_memory() if group is not None else []
            memory.append(f"{step}: {_fmt_mem([m for e in pool.device_memory() for m in e] + ranks)}")

        try:
            self._greedy(pool)
            note("awake")
            asleep = sleep_for_training(pool, placement)
            note("asleep")
            group = TrainerGroup(str(self.model_a), run.training, run.model, 1,
                                 **placement.trainer_options(pool.placement_group))
            group.fit(str(examples), str(self.work / "colocated_train"), resume=False)
            note("trained")

            def update() -> None:
                note("weights awake")
                pool.update_weights_from_path(str(self.work / "colocated_train" / "hf"))

            wake_around(pool, asleep, update)
            note("awake again")
            out = self._greedy(pool)
        finally:
            if group is not None:
                group.shutdown()
            pool.shutdown()
        if len(out) != len(PROMPTS):
            raise AssertionError(f"{len(out)} outputs for {len(PROMPTS)} prompts after waking")
        sleep = "sleep level 2" if self.on_gpu else "sleep is a no-op without CUDA"
        return f"{sleep}; " + "; ".join(memory)

    def tensor_parallel(self) -> str:
        from east_ds.cluster.weight_sync import checkpoint_tensors

        run = self._run_cfg("split", tp=2)
        placement = self._placement(run)
        pool = self._pool(run, placement, self.model_a)
        try:
            self.tp_outputs = self._greedy(pool)
            t0 = time.perf_counter()
            pool.update_weights_from_state_dict(checkpoint_tensors(str(self.model_b)))
            self.tp_update_s = time.perf_counter() - t0
            self.tp_by_refs = self._greedy(pool)
            pool.update_weights_from_path(str(self.model_b))
            self.tp_by_path = self._greedy(pool)
            binding = pool.locations[0].get("thread_binding", "")
        finally:
            pool.shutdown()
        detail = f"{len(self.tp_outputs)} greedy outputs from one engine over 2 workers"
        if binding:  # vLLM-CPU: each worker's threads on cores of its own
            detail += f" (threads {binding})"
        if hasattr(self, "tp1_outputs"):  # reported, not required: TP changes the order of a float sum
            same = self.tp1_outputs == {"a": self.tp_outputs, "b": self.tp_by_path}
            detail += f"; equals one GPU's output before and after the update: {'yes' if same else 'no'}"
        return detail

    def object_store_tp(self) -> str:
        if not hasattr(self, "tp_by_refs"):
            raise RuntimeError("needs the tensor parallel 2 row, which did not get as far")
        if self.tp_by_refs != self.tp_by_path:
            raise AssertionError("output after the object-store update differs from a reload of the same weights")
        if self.tp_by_refs == self.tp_outputs:
            raise AssertionError("the object-store update did not change the engine's output")
        return f"update in {self.tp_update_s:.2f} s; output equals a reload"

    def eager_vs_graphs(self) -> str:
        from east_ds.rollout.engine_pool import Sampling

        rates = {}
        for eager in (True, False):
            run = self._run_cfg("split", enforce_eager=eager)
            pool = self._pool(run, self._placement(run), self.model_a)
            try:
                prompts = self.prompts * 16
                t0 = time.perf_counter()
                out = pool.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=128))
                rates[eager] = sum(s["num_tokens"] for o in out for s in o) / (time.perf_counter() - t0)
            finally:
                pool.shutdown()
        return (f"eager {rates[True]:,.0f} tok/s, CUDA graphs {rates[False]:,.0f} tok/s "
                f"({rates[False] / rates[True]:.2f}x)")


PATHS = {  # path -> (GPUs it needs, whether it needs real CUDA)
    "split + broadcast": (2, False),
    "colocated sleep/wake": (1, False),
    "tensor parallel 2": (2, False),
    "object_store + TP 2": (2, False),
    "eager vs CUDA graphs": (1, True),
}


def skip_reason(path: str, gpus: float, on_gpu: bool) -> str:
    """Why `path` cannot run on a cluster of `gpus` GPUs (real CUDA or not); '' when it can."""
    need, cuda = PATHS[path]
    if gpus < need:
        return f"needs {need} GPU(s); the cluster has {gpus:g}"
    if cuda and not on_gpu:
        return "needs CUDA (this node's GPUs are logical)"
    return ""


def run_smoke(cfg: RunConfig, work: Path, logical_gpus: int | None = None,
              report: Callable[[Row], None] = lambda r: None) -> list[Row]:
    """Run every path this node can take; `report` is called with each row as it finishes."""
    import torch

    from east_ds.cluster.ray_utils import cluster_gpus, init_ray

    init_ray(cfg.placement.ray_address, num_gpus=logical_gpus)
    gpus, on_gpu = cluster_gpus(), torch.cuda.is_available()
    smoke = Smoke(cfg, work, gpus, on_gpu)
    methods = {"split + broadcast": smoke.split_broadcast, "colocated sleep/wake": smoke.colocated_sleep_wake,
               "tensor parallel 2": smoke.tensor_parallel, "object_store + TP 2": smoke.object_store_tp,
               "eager vs CUDA graphs": smoke.eager_vs_graphs}
    rows = []
    for name, method in methods.items():
        t0 = time.perf_counter()
        if reason := skip_reason(name, gpus, on_gpu):
            row = Row(name, "skipped", 0.0, reason)
        else:
            try:
                row = Row(name, "passed", 0.0, method())
            except Exception as e:  # a row reports its error; the next path still runs
                first = (str(e).strip().splitlines() or [""])[0]
                row = Row(name, "FAILED", 0.0, f"{type(e).__name__}: {first[:300]}")
        row.seconds = time.perf_counter() - t0
        report(row)
        rows.append(row)
    return rows


def format_row(row: Row) -> str:
    return f"  {row.path:<22} {row.status:<8} {row.seconds:6.1f} s  {row.detail}"
