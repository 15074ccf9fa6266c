"""The iterative EAST driver: `east-ds run CONFIG.yaml [key=value ...]`.

Each iteration reads like the algorithm of docs/method.md section 1:

    rollout      sample n responses per training question with the current policy (vLLM engines in Ray actors)
    weigh        extract and grade answers, cluster them, entropy, filter, mapping function, select examples
    reference    log-probs of the examples under the frozen starting policy (DPO and KTO only)
    train        the entropy-weighted loss on a DeepSpeed ZeRO engine in Ray actors -> a new checkpoint
    update       load the checkpoint into the running engines (no restart)
    evaluate     greedy accuracy on the test set

Every phase writes its output into the run directory (see rundir.py) and is skipped when that output exists, so
rerunning the same command after a crash or a kill resumes where it stopped. Before the run name is claimed the
cheap checks of `east-ds check` run (preflight.py), so bad input fails at once and claims nothing. Phases are
timed; metrics go to `iter_<k>/metrics.json` and the run's `metrics.jsonl` (and TensorBoard when installed, W&B
with `logging.wandb`).

Departures from the reference code, numbered (docs/method.md section 7):
1. The SFT/DPO/KTO weight multiplies each example's own loss (docs/method.md section 3), not a micro-batch mean.
2. Clusters are equivalence classes of answers by default (`weighting.cluster_by: exact` restores string match).
3. The reference model of DPO/KTO is the policy at the start of each iteration, its log-probs computed once
   before training, so no second model is held in memory while training.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from east_ds.cluster.placement import Placement, SchedulingTimeout, free_resources, total_resources
from east_ds.cluster.ray_utils import NodeLostError, WeightSyncError, started
from east_ds.cluster.storage import StorageNotShared, check_shared_path
from east_ds.config import ConfigError, RunConfig, load_config, to_dict
from east_ds.data.load import load_dataset, load_tokenizer
from east_ds.metrics import Phases
from east_ds.rundir import IterDir, RunDir, RunDirError
from east_ds.schema import REFERENCE_COLUMNS
from east_ds.tables import TableError, read_table, write_json, write_table
from east_ds.training.divergence import TrainingDiverged
from east_ds.weighting.mapping import WeightingError
from east_ds.weighting.stage import weigh


def run(cfg: RunConfig, sink=None) -> list[dict]:
    """Run (or resume) `cfg.iterations` EAST iterations. Returns the run's metrics log."""
    from east_ds.rollout.engine_pool import EnginePool
    from east_ds.metrics import make_sink
    from east_ds.checks.preflight import check_before_run
    from east_ds.cluster.ray_utils import cluster_gpus, init_ray
    from east_ds.rollout.stage import run_eval, run_rollout
    from east_ds.training.actors import TrainerGroup

    for key, value in (("model.path", cfg.model.path), ("data.train", cfg.data.train)):
        if not value:
            raise ConfigError(f"{key} is required (a hub name or a local path)")
    check_before_run(cfg)  # bad input fails here, listing every problem, before the run name is claimed
    rd = RunDir(cfg)
    rd.claim()
    evaluate = bool(cfg.data.test) and cfg.evaluation.every_iteration
    if all(rd.iteration(k).metrics.is_file() for k in range(0 if evaluate else 1, cfg.iterations + 1)):
        print(f"[east-ds] {rd.path}: every iteration finished earlier; nothing to do", flush=True)
        return rd.metrics_log()  # without starting Ray, the engines or the trainer
    system = cfg.data.system_prompt
    train_q = load_dataset(cfg.data.train, cfg.data.format, cfg.data.train_split, cfg.data.train_limit)
    test_q = (load_dataset(cfg.data.test, cfg.data.format, cfg.data.test_split, cfg.data.test_limit)
              if evaluate else None)

    # The cluster first: a run it cannot hold, or whose files a node cannot see, stops before anything loads.
    init_ray(cfg.placement.ray_address)
    placement = Placement(cfg, cluster_gpus())
    fits_now = placement.check_resources(total_resources(), free_resources(), cfg.placement.wait_for_resources)
    check_storage(rd.path, cfg.model.path)
    sink = sink or make_sink(rd.path, rank=0, jsonl=False,  # metrics.jsonl is rebuilt by RunDir
                             logging=cfg.logging, name=cfg.name, run_config=to_dict(cfg))
    pool = group = None  # one trainer process group for the whole run, started once; the model loads per call
    located: dict = {"mode": cfg.placement.mode, "cluster_gpus": placement.gpus}  # where engines and ranks landed
    # The engines start in the background while the driver loads the tokenizer; so do the trainer ranks when
    # training is still to do, the cluster has room for both now (so the engines never wait on them) and they do
    # not share GPUs with the engines (colocated ranks start once the engines sleep). Each start is imports, model
    # loads and process groups that need nothing from the driver.
    starter = ThreadPoolExecutor(max_workers=2, thread_name_prefix="east-ds-start")
    pool_start = starter.submit(EnginePool, rd.policy_path(), placement.rollout_config(cfg.rollout), cfg.model,
                                resources=cfg.placement.engine_resources, **placement.engine_options())
    trains = any(not rd.iteration(k).checkpoint.is_dir() for k in range(1, cfg.iterations + 1))
    group_start = (starter.submit(TrainerGroup, cfg.model.path, cfg.training, cfg.model, cfg.training.num_ranks,
                                  resources=cfg.placement.trainer_resources, **placement.trainer_options())
                   if trains and fits_now and not placement.colocated else None)
    starter.shutdown(wait=False)

    def trainer(policy: str):
        nonlocal group
        placement.before_training()
        if group is None:
            group = group_start.result() if group_start else TrainerGroup(
                policy, cfg.training, cfg.model, cfg.training.num_ranks, resources=cfg.placement.trainer_resources,
                **placement.trainer_options())
            located["ranks"] = group.locations
            write_json(located, rd.path / "placement.json")
        group.set_model_path(policy)
        return group

    def evaluate_into(it: IterDir, phases: Phases) -> float:
        with phases("evaluate"):
            return run_eval(pool, test_q, tokenizer, cfg.evaluation.max_new_tokens, it.eval, system)["accuracy"]

    try:
        tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
        pool = placement.pool = pool_start.result()
        located["engines"] = pool.locations
        print("[east-ds] rollout engines on " + ", ".join(f"{w.get('node_ip', 'local')} (node {w.get('node_id', '?')})"
                                                          for w in pool.locations), flush=True)
        write_json(located, rd.path / "placement.json")
        # Iteration 0: the starting model's accuracy, the baseline every later iteration is compared with.
        it0 = rd.iteration(0)
        if evaluate and not it0.metrics.is_file():
            phases = Phases()
            m = {"iteration": 0, **_run_keys(cfg), "eval_accuracy": evaluate_into(it0, phases),
                 "phase_seconds": phases.seconds}
            rd.write_iteration_metrics(it0, m)
            sink.log(m, step=0)

        warned = False  # the near-hopeless warning, once per run
        for k in range(1, cfg.iterations + 1):
            it = rd.iteration(k)
            if it.metrics.is_file():
                print(f"[east-ds] iteration {k}: finished earlier, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            phases = Phases()
            m: dict = {"iteration": k, **_run_keys(cfg)}
            policy = str(rd.iteration(k - 1).checkpoint) if k > 1 else cfg.model.path

            # -- rollout -------------------------------------------------------------------------------------
            if it.rollouts.is_file():
                phases.skip("rollout")
            else:
                with phases("rollout"):
                    run_rollout(pool, train_q, tokenizer, cfg.rollout, it.path, system)

            # -- grade, cluster, entropy, weights, examples ------------------------------------------------------
            if it.examples.is_file():
                phases.skip("weigh")
            else:
                def perplexity(table, policy=policy, it=it):  # the perplexity baseline scores with the trainer
                    write_table(table, it.path / "perplexity_in.parquet")
                    trainer(policy).response_nll(str(it.path / "perplexity_in.parquet"),
                                                 str(it.path / "perplexity.parquet"))
                    return read_table(it.path / "perplexity.parquet").groupby("question_id")["nll"].mean()

                with phases("weigh"):
                    m["weigh"] = weigh(read_table(it.rollouts), cfg.weighting, cfg.training.loss, it.path,
                                       perplexity=perplexity)
            m["diagnosis"] = diagnose_iteration(rd, k, cfg, warned)
            warned = warned or bool(m["diagnosis"].get("warning"))

            # -- reference log-probs, then training, on the same trainer group ----------------------------------
            if it.checkpoint.is_dir():
                phases.skip("train")
            else:
                with phases("train"):  # starting the trainer group (first iteration) counts as training
                    group = trainer(policy)
                needed = REFERENCE_COLUMNS[cfg.training.loss]
                if needed and not set(needed) <= set(read_table(it.examples).columns):
                    with phases("reference"):
                        m["reference"] = group.reference_logprobs(str(it.examples), str(it.examples))
                with phases("train"):
                    m["train"] = group.fit(str(it.examples), str(it.train), resume=True)
                rd.publish_checkpoint(it, it.train / "hf")  # fit left no optimizer state behind (training.engine.fit)

            # -- live weight update of the engines (woken around it, if they slept) ------------------------------
            with phases("update_weights"):
                placement.after_training(lambda: update_engines(pool, str(it.checkpoint), cfg.rollout, trainer,
                                                                policy))

            # -- evaluate ----------------------------------------------------------------------------------------
            if evaluate:
                m["eval_accuracy"] = evaluate_into(it, phases)

            m["phase_seconds"] = phases.seconds
            m["skipped_phases"] = phases.skipped
            m["actor_events"] = sorted(pool.drain_events() + (group.drain_events() if group else []),
                                       key=lambda e: e["t"])  # sleep, wake, updates, reference/fit start and end
            m["iteration_seconds"] = time.perf_counter() - t0
            rd.write_iteration_metrics(it, m)
            sink.log(m, step=k)
            acc = m.get("eval_accuracy")
            print(f"[east-ds] iteration {k} done in {m['iteration_seconds']:.1f} s"
                  + (f"; test accuracy {acc:.3f}" if acc is not None else ""), flush=True)
    finally:
        # A start still under way is waited for, so that nothing it starts outlives the run.
        group = group or started(group_start)
        pool = pool or started(pool_start)
        if group is not None:
            group.shutdown()
        if pool is not None:
            pool.shutdown()
        sink.close()
    return rd.metrics_log()


def diagnose_iteration(rd: RunDir, k: int, cfg: RunConfig, warned: bool) -> dict:
    """Where iteration k's weight goes (weighting.diagnosis): writes iter_<k>/diagnosis.parquet, prints one line
    and, unless `warned`, the warning when most of the weight is on near-hopeless questions; returns the figures
    (the iteration's `diagnosis` metrics)."""
    from east_ds.weighting import diagnosis

    previous = rd.iteration(k - 1).questions
    table, figures = diagnosis.diagnose(read_table(rd.iteration(k).questions),
                                        read_table(previous) if k > 1 and previous.is_file() else None)
    write_table(table, rd.iteration(k).path / "diagnosis.parquet")
    print(diagnosis.summary_line(k, figures), flush=True)
    message = diagnosis.warning(figures, cfg.weighting.a, cfg.weighting.value)
    if message and not warned:
        print(message, flush=True)
    clean = {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in figures.items()}
    return {**clean, "warning": bool(message)}


def check_storage(run_dir: Path, model_path: str) -> None:
    """Every node must see the run directory (and the model, when it is a local path) as the driver does;
    StorageNotShared names each node and path that fails."""
    problems = check_shared_path(run_dir)
    if Path(model_path).exists():
        problems += check_shared_path(model_path, token=False)  # read only: compare what each node sees
    if problems:
        raise StorageNotShared("\n".join(problems))


def update_engines(pool, checkpoint: str, cfg, trainer, policy: str) -> None:
    """Load the new checkpoint into the running engines the way `rollout.weight_sync` says (docs/rollout.md)."""
    if cfg.weight_sync == "object_store":  # the driver reads the checkpoint; engines need no shared storage
        from east_ds.cluster.weight_sync import checkpoint_tensors

        pool.update_weights_from_state_dict(checkpoint_tensors(checkpoint))
    elif cfg.weight_sync == "broadcast":  # trainer rank 0 reads its export and broadcasts it
        trainer(policy).broadcast_weights(pool, checkpoint, cfg.weight_bucket_mb)
    else:
        pool.update_weights_from_path(checkpoint)


def _run_keys(cfg: RunConfig) -> dict:
    return {"name": cfg.name, "a": cfg.weighting.a, "value": cfg.weighting.value, "loss": cfg.training.loss}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) iterative EAST from a YAML config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. weighting.a=0 name=vanilla")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        log = run(cfg)
    except (ConfigError, RunDirError, TableError, WeightingError, FileNotFoundError, SchedulingTimeout,
            StorageNotShared, NodeLostError, WeightSyncError, TrainingDiverged) as e:
        print(f"east-ds run: error: {e}", file=sys.stderr)
        return 2
    for m in log:
        acc = m.get("eval_accuracy")
        print(f"iteration {m['iteration']}: accuracy {acc:.3f}" if acc is not None else f"iteration {m['iteration']}")
    print(f"run directory: {Path(cfg.run_dir)}")
    return 0
