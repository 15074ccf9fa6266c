"""The iterative EAST driver: `east-ds run CONFIG.yaml [key=value ...]`.

Each iteration is the algorithm of docs/method.md section 1, one line per phase in `run_iteration`:

    rollout         sample n responses per training question with the current policy (vLLM engines, Ray actors)
    weigh           extract and grade answers, cluster them, entropy, filter, mapping function, select examples
    diagnosis       where the weight went (bands of sampled accuracy), one printed line
    sleep engines   colocated engines free their GPUs for the trainer (a no-op in split placement and on CPUs)
    start trainer   the DeepSpeed ranks (Ray actors), started once per run, pointed at this iteration's policy
    reference       log-probs of the examples under the starting policy (DPO and KTO only)
    train           the entropy-weighted loss -> a new checkpoint, published whole
    wake weights    colocated engines take back their weights' memory
    update_weights  load the checkpoint into the running engines (rollout.weight_sync: path, object_store,
                    broadcast; cluster/weight_sync.py)
    wake kv_cache   ... and their KV cache
    merge           LoRA runs, last iteration: the adapter merged into the base, a plain HF model (iter_<k>/merged)
    evaluate        greedy accuracy on the test set

Every phase writes its own output into the iteration's directory (rundir.IterDir names every file) and
`Phases.run` skips a phase whose output exists, so rerunning the same command after a crash or a kill resumes
where it stopped. A phase's returned metrics are stored beside its output (`IterDir.phase_metrics`), so a
resumed iteration reports what an uninterrupted one would. Before the run name is claimed the cheap checks of
`east-ds check` run (preflight.py), so bad input fails at once and claims nothing.

The heavy parts come from `Backends`: `RayBackends` starts Ray, vLLM engines (rollout.engine_pool) and DeepSpeed
ranks (training.actors); tests drive the same loop with small in-process stand-ins behind the same protocols
(`EnginesLike`, `TrainerLike`).

Departures from the reference code, numbered (docs/method.md, "Departures"):
1. The SFT/DPO/KTO weight multiplies each example's own loss, not a micro-batch mean.
2. Clusters are equivalence classes of answers by default (`weighting.cluster_by: exact` restores string match).
3. The reference model of DPO/KTO is the policy at the start of each iteration, its log-probs computed once
   before training, so no second model is held in memory while training.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from east_ds.cluster.placement import Placement, SchedulingTimeout
from east_ds.cluster.ray_utils import NodeLostError, WeightSyncError, started
from east_ds.cluster.storage import StorageNotShared
from east_ds.cluster.weight_sync import sync_weights
from east_ds.config import ConfigError, RunConfig, load_config, to_dict
from east_ds.data.load import load_dataset, load_tokenizer
from east_ds.metrics import Phases
from east_ds.rundir import IterDir, RunDir, RunDirError
from east_ds.schema import LOSSES
from east_ds.tables import TableError, read_table, write_json, write_table
from east_ds.training.divergence import TrainingDiverged
from east_ds.weighting.mapping import VALUES, WeightingError
from east_ds.weighting.stage import weigh


# ----------------------------------------------------------------------------------------------------------------
# What the loop needs of the heavy parts


class EnginesLike(Protocol):
    """The rollout engines as the loop uses them (rollout.engine_pool.EnginePool; see its docstrings)."""

    locations: list[dict]

    def sleep(self) -> None: ...
    def wake(self, tags: list[str] | None = None) -> None: ...
    def drain_events(self) -> list[dict]: ...
    def shutdown(self) -> None: ...
    # and what rollout.stage and cluster.weight_sync call: on_gpu, fits, request, run_shards, generate,
    # update_weights_from_path, update_weights_from_state_dict (init_weight_group, update_weights_broadcast)


class TrainerLike(Protocol):
    """The trainer's ranks as the loop uses them (training.actors.TrainerGroup)."""

    locations: list[dict]
    sender: Any  # trainer rank 0's actor, the sending end of a weight broadcast

    def set_model_path(self, model_path: str) -> None: ...
    def reference_logprobs(self, examples_path: str, out_path: str) -> dict: ...
    def response_nll(self, examples_path: str, out_path: str) -> dict: ...
    def fit(self, examples_path: str, out_dir: str, resume: bool = True) -> dict: ...
    def drain_events(self) -> list[dict]: ...
    def shutdown(self) -> None: ...


class Backends(Protocol):
    def connect(self, cfg: RunConfig, run_dir: Path) -> tuple[Placement, bool]:
        """Join or start the cluster; (placement, whether the whole run fits in what is free now)."""
    def start_engines(self, cfg: RunConfig, placement: Placement, policy: str) -> EnginesLike: ...
    def start_trainer(self, cfg: RunConfig, placement: Placement, policy: str,
                      engines: EnginesLike | None = None) -> TrainerLike:
        """The trainer ranks; colocated ranks sit on `engines`' GPUs."""


class RayBackends:
    """The real components: Ray, vLLM engines in Ray actors, DeepSpeed ranks in Ray actors."""

    def connect(self, cfg: RunConfig, run_dir: Path) -> tuple[Placement, bool]:
        from east_ds.cluster.placement import free_resources, total_resources
        from east_ds.cluster.ray_utils import cluster_gpus, init_ray
        from east_ds.cluster.storage import check_storage

        init_ray(cfg.placement.ray_address)
        placement = Placement.of(cfg, cluster_gpus())
        fits_now = placement.check_resources(total_resources(), free_resources(), cfg.placement.wait_for_resources)
        check_storage(run_dir, cfg.model.path)
        return placement, fits_now

    def start_engines(self, cfg: RunConfig, placement: Placement, policy: str) -> EnginesLike:
        """The engines on `policy`. LoRA (training.lora): on the base model, serving `policy`'s adapter when it
        is one (a resumed run), else the base."""
        from east_ds.rollout.engine_pool import EnginePool

        lora = cfg.training.lora
        pool = EnginePool(cfg.model.path if lora.enabled else policy, placement.rollout_config(cfg.rollout),
                          cfg.model, resources=cfg.placement.engine_resources, lora_rank=lora.r,
                          **placement.engine_options())
        if lora.enabled and policy != cfg.model.path:
            try:
                pool.load_adapter(policy)
            except BaseException:
                pool.shutdown()
                raise
        return pool

    def start_trainer(self, cfg: RunConfig, placement: Placement, policy: str,
                      engines: EnginesLike | None = None) -> TrainerLike:
        from east_ds.training.actors import TrainerGroup

        group = getattr(engines, "placement_group", None)
        return TrainerGroup(policy, cfg.training, cfg.model, cfg.training.num_ranks,
                            resources=cfg.placement.trainer_resources, **placement.trainer_options(group))


# ----------------------------------------------------------------------------------------------------------------
# Bring-up


@dataclass
class Session:
    """Everything a run holds while it runs: bring-up's result, and the engines' and trainer's state."""

    cfg: RunConfig
    rundir: RunDir
    backends: Backends
    placement: Placement
    train_q: pd.DataFrame
    test_q: pd.DataFrame | None
    tokenizer: Any
    engines: EnginesLike
    sink: Any
    located: dict  # where engines and ranks landed: placement.json
    trainer_start: Future | None = None  # ranks started in the background with the engines, if they were
    trainer: TrainerLike | None = None
    asleep: bool = False  # colocated engines gave their GPUs to the trainer
    warned: bool = False  # the near-hopeless-weight warning, once per run

    def policy(self, k: int) -> str:
        """The model iteration k starts from: the previous iteration's checkpoint, or the starting model."""
        return str(self.rundir.iteration(k - 1).checkpoint) if k > 1 else self.cfg.model.path

    def iterations_to_run(self) -> list[int]:
        return [k for k in range(1, self.cfg.iterations + 1) if not self.rundir.iteration(k).metrics.is_file()]

    def close(self) -> None:
        """Shut down what runs, a start still under way included (so nothing it starts outlives the run)."""
        trainer = self.trainer or started(self.trainer_start)
        if trainer is not None:
            trainer.shutdown()
        self.engines.shutdown()
        self.sink.close()


def start(cfg: RunConfig, rd: RunDir, backends: Backends, sink=None) -> Session:
    """Bring-up: the cluster (a run it cannot hold, or whose files a node cannot see, stops here), the data, the
    engines, and the trainer ranks when they can start now. The engines start in the background while the driver
    loads the data and tokenizer; so do the ranks when training is still to do, the cluster has room for both
    now (so the engines never wait on them) and they do not share GPUs with the engines (colocated ranks start
    once the engines sleep)."""
    from east_ds.metrics import make_sink

    placement, fits_now = backends.connect(cfg, rd.path)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="east-ds-start")
    engines_start = pool.submit(backends.start_engines, cfg, placement, rd.policy_path())
    trains = any(not rd.iteration(k).checkpoint.is_dir() for k in range(1, cfg.iterations + 1))
    trainer_start = (pool.submit(backends.start_trainer, cfg, placement, cfg.model.path)
                     if trains and fits_now and not placement.colocated else None)
    pool.shutdown(wait=False)
    try:
        evaluate = bool(cfg.data.test) and cfg.evaluation.every_iteration
        train_q = load_dataset(cfg.data.train, cfg.data.format, cfg.data.train_split, cfg.data.train_limit)
        test_q = (load_dataset(cfg.data.test, cfg.data.format, cfg.data.test_split, cfg.data.test_limit)
                  if evaluate else None)
        tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
        engines = engines_start.result()
    except BaseException:
        for handle in (started(trainer_start), started(engines_start)):
            if handle is not None:
                handle.shutdown()
        raise
    located = {"mode": cfg.placement.mode, "cluster_gpus": placement.gpus, "engines": engines.locations}
    print("[east-ds] rollout engines on " + ", ".join(f"{w.get('node_ip', 'local')} (node {w.get('node_id', '?')})"
                                                      for w in engines.locations), flush=True)
    write_json(located, rd.path / "placement.json")
    sink = sink or make_sink(rd.path, rank=0,  # metrics.jsonl is rebuilt by RunDir
                             logging=cfg.logging, name=cfg.name, run_config=to_dict(cfg))
    return Session(cfg, rd, backends, placement, train_q, test_q, tokenizer, engines, sink, located, trainer_start)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def run(cfg: RunConfig, sink=None, backends: Backends | None = None) -> list[dict]:
    """Run (or resume) `cfg.iterations` EAST iterations. Returns the run's metrics log."""
    from east_ds.checks.preflight import check_before_run

    for key, value in (("model.path", cfg.model.path), ("data.train", cfg.data.train)):
        if not value:
            raise ConfigError(f"{key} is required (a hub name or a local path)")
    check_before_run(cfg)  # bad input fails here, listing every problem, before the run name is claimed
    rd = RunDir(cfg)
    rd.claim()
    evaluates = bool(cfg.data.test) and cfg.evaluation.every_iteration
    if all(rd.iteration(k).metrics.is_file() for k in range(0 if evaluates else 1, cfg.iterations + 1)):
        print(f"[east-ds] {rd.path}: every iteration finished earlier; nothing to do", flush=True)
        return rd.metrics_log()  # without starting Ray, the engines or the trainer
    session = start(cfg, rd, backends or RayBackends(), sink)
    try:
        if evaluates and not rd.iteration(0).metrics.is_file():
            run_baseline(session)
        for k in session.iterations_to_run():
            run_iteration(session, k)
    finally:
        session.close()
    return rd.metrics_log()


def run_baseline(s: Session) -> None:
    """Iteration 0: the starting model's accuracy, the baseline every later iteration is compared with."""
    it, ph, t0 = s.rundir.iteration(0), Phases(store=s.rundir.iteration(0).phase_metrics), time.perf_counter()
    ph.run("evaluate", it.eval, lambda: evaluate(s, it))
    finish_iteration(s, 0, it, ph, t0)


def run_iteration(s: Session, k: int) -> None:
    """One EAST iteration, one line per phase (each skipped when its output exists)."""
    it, ph, cfg, policy, t0 = s.rundir.iteration(k), Phases(store=s.rundir.iteration(k).phase_metrics), s.cfg, \
        s.policy(k), time.perf_counter()
    trained = it.checkpoint.is_dir()
    ph.run("rollout", it.rollouts, lambda: rollout(s, it))
    ph.run("weigh", it.examples, lambda: weigh_iteration(s, it, policy))
    ph.run("diagnosis", None, lambda: diagnose_iteration(s, k))
    ph.run("sleep engines", trained or not s.placement.colocated, lambda: sleep_engines(s))
    ph.run("start trainer", trained, lambda: start_trainer(s, policy))
    ph.run("reference", not needs_reference(cfg) or it.reference, lambda: reference(s, it, policy))
    ph.run("train", it.checkpoint, lambda: train(s, it, policy))
    ph.run("wake weights", not s.asleep, lambda: wake_engines(s, ["weights"]))
    ph.run("update_weights", None, lambda: sync_weights(cfg.rollout.weight_sync, s.engines, sender(s, policy),
                                                         str(it.checkpoint), cfg.rollout.weight_bucket_mb))
    ph.run("wake kv_cache", not s.asleep, lambda: wake_engines(s, ["kv_cache"]))
    ph.run("merge", not (cfg.training.lora.enabled and k == cfg.iterations) or it.merged, lambda: merge(s, it))
    ph.run("evaluate", s.test_q is None or it.eval, lambda: evaluate(s, it))
    finish_iteration(s, k, it, ph, t0)


# ----------------------------------------------------------------------------------------------------------------
# The phases (each returns its metrics)


def rollout(s: Session, it: IterDir) -> dict:
    from east_ds.rollout.stage import run_rollout

    df = run_rollout(s.engines, s.train_q, s.tokenizer, s.cfg.rollout, it.path, s.cfg.data.system_prompt)
    return dict(df.attrs.get("stats", {}))


def weigh_iteration(s: Session, it: IterDir, policy: str) -> dict:
    """Grade, cluster, weigh, select (weighting.stage.weigh). The perplexity baseline scores the selected responses
    with the trainer, which it starts (and for which colocated engines sleep) when that value is chosen."""
    scorer = partial(score_perplexity, s, it, policy) if VALUES[s.cfg.weighting.value].needs_trainer else None
    return weigh(read_table(it.rollouts), s.cfg.weighting, s.cfg.training.loss, it.path, perplexity=scorer)


def score_perplexity(s: Session, it: IterDir, policy: str, table: pd.DataFrame) -> pd.Series:
    """The perplexity baseline's value: question_id -> mean token NLL of its selected response under `policy`,
    scored by the trainer (started here; colocated engines sleep for it)."""
    sleep_engines(s)
    start_trainer(s, policy)
    write_table(table, it.perplexity_in)
    s.trainer.response_nll(str(it.perplexity_in), str(it.perplexity))
    return read_table(it.perplexity).groupby("question_id")["nll"].mean()


def diagnose_iteration(s: Session, k: int) -> dict:
    """Where iteration k's weight goes (weighting.diagnosis): writes iter_<k>/diagnosis.parquet, prints one line
    and, once per run, the warning when most of the weight is on near-hopeless questions; returns the figures
    (the iteration's `diagnosis` metrics)."""
    from east_ds.weighting import diagnosis

    it, previous = s.rundir.iteration(k), s.rundir.iteration(k - 1).questions
    table, figures = diagnosis.diagnose(read_table(it.questions),
                                        read_table(previous) if k > 1 and previous.is_file() else None)
    write_table(table, it.diagnosis)
    print(diagnosis.summary_line(k, figures), flush=True)
    message = diagnosis.warning(figures, s.cfg.weighting.a, s.cfg.weighting.value)
    if message and not s.warned:
        print(message, flush=True)
    s.warned = s.warned or bool(message)
    clean = {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in figures.items()}
    return {**clean, "warning": bool(message)}


def sleep_engines(s: Session) -> dict:
    """Colocated: the engines free their GPU memory for the trainer (device_plan.sleep_plan's level)."""
    if s.placement.colocated and not s.asleep:
        s.engines.sleep()
        s.asleep = True
    return {}


def wake_engines(s: Session, tags: list[str]) -> dict:
    """Colocated engines take back `tags` (["weights"] before the update, ["kv_cache"] after it)."""
    s.engines.wake(tags)
    if "kv_cache" in tags:
        s.asleep = False
    return {}


def start_trainer(s: Session, policy: str) -> dict:
    """The trainer ranks, once per run (or the ranks started in the background at bring-up), pointed at
    `policy`; placement.json records where they landed."""
    if s.trainer is None:
        s.trainer = (s.trainer_start.result() if s.trainer_start
                     else s.backends.start_trainer(s.cfg, s.placement, policy, s.engines))
        s.located["ranks"] = s.trainer.locations
        write_json(s.located, s.rundir.path / "placement.json")
    s.trainer.set_model_path(policy)
    return {}


def needs_reference(cfg: RunConfig) -> bool:
    return LOSSES[cfg.training.loss].needs_reference


def reference(s: Session, it: IterDir, policy: str) -> dict:
    """The starting policy's log-probs of the examples, written as the reference phase's own table."""
    start_trainer(s, policy)  # started already, unless a resume found training done but this phase not
    return s.trainer.reference_logprobs(str(it.examples), str(it.reference))


def train(s: Session, it: IterDir, policy: str) -> dict:
    """Train on the examples (DPO/KTO: the reference phase's table) and publish the export as the checkpoint in
    one rename; `fit` leaves no optimizer state behind (training.engine.fit)."""
    start_trainer(s, policy)
    examples = it.reference if needs_reference(s.cfg) else it.examples
    out = s.trainer.fit(str(examples), str(it.train), resume=True)
    write_json(out, it.phase_metrics("train"))  # before the checkpoint appears: "done" needs both
    s.rundir.publish_checkpoint(it, it.train / "hf")
    return out


def sender(s: Session, policy: str):
    """Trainer rank 0, the broadcast's sending end (started if a resume skipped training); None otherwise."""
    if s.cfg.rollout.weight_sync != "broadcast":
        return None
    if s.trainer is None:
        start_trainer(s, policy)
    return s.trainer.sender


def merge(s: Session, it: IterDir) -> dict:
    """LoRA, the run's last iteration: the base model with the iteration's adapter merged in, written as a plain
    Hugging Face model (iter_<k>/merged) that loads without peft (training.lora.merge)."""
    from east_ds.training.lora import merge as merge_adapter

    merge_adapter(it.checkpoint, it.merged, s.cfg.model.dtype, s.cfg.model.trust_remote_code)
    return {"path": str(it.merged)}


def evaluate(s: Session, it: IterDir) -> dict:
    from east_ds.rollout.stage import run_eval

    return run_eval(s.engines, s.test_q, s.tokenizer, s.cfg.evaluation.max_new_tokens, it.eval,
                    s.cfg.data.system_prompt)


def finish_iteration(s: Session, k: int, it: IterDir, ph: Phases, t0: float) -> None:
    """Write the iteration's metrics (metrics.json, the run's metrics.jsonl, the sink) and print its line."""
    m: dict = {"iteration": k, "name": s.cfg.name, "a": s.cfg.weighting.a, "value": s.cfg.weighting.value,
               "loss": s.cfg.training.loss, **ph.metrics, "phase_seconds": ph.seconds, "skipped_phases": ph.skipped}
    if "evaluate" in ph.metrics:
        m["eval_accuracy"] = ph.metrics["evaluate"]["accuracy"]
    m["actor_events"] = sorted(s.engines.drain_events() + (s.trainer.drain_events() if s.trainer else []),
                               key=lambda e: e["t"])  # sleep, wake, updates, reference/fit start and end
    m["iteration_seconds"] = time.perf_counter() - t0
    s.rundir.write_iteration_metrics(it, m)
    s.sink.log(m, step=k)
    if k > 0:
        acc = m.get("eval_accuracy")
        print(f"[east-ds] iteration {k} done in {m['iteration_seconds']:.1f} s"
              + (f"; test accuracy {acc:.3f}" if acc is not None else ""), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) iterative EAST from a YAML config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. weighting.a=0 name=vanilla")
    p.set_defaults(func=main)


HANDLED = (ConfigError, RunDirError, TableError, WeightingError, FileNotFoundError, SchedulingTimeout,
           StorageNotShared, NodeLostError, WeightSyncError, TrainingDiverged)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        log = run(cfg)
    except HANDLED as e:
        print(f"east-ds run: error: {e}", file=sys.stderr)
        return 2
    for m in log:
        acc = m.get("eval_accuracy")
        print(f"iteration {m['iteration']}: accuracy {acc:.3f}" if acc is not None else f"iteration {m['iteration']}")
    print(f"run directory: {Path(cfg.run_dir)}")
    return 0
