"""`east-ds rollout` and `east-ds eval` (also `python -m east_ds.rollout.cli rollout|eval ...`).

    east-ds rollout --model PATH --data train.jsonl --format gsm8k --limit 100 --n 8 --num-engines 2 --out DIR
    east-ds eval    --model PATH --data test.jsonl --format gsm8k --max-new-tokens 512 --out DIR/eval.parquet
    east-ds rollout --config run.yaml rollout.n=4 data.train_limit=32 --out DIR

Settings come from, in increasing priority: RolloutConfig/ModelConfig/DataConfig defaults, `--config CFG.yaml`
(sections model, data, rollout, evaluation, placement), `key=value` overrides (`rollout.n=4`), then explicit flags.

Placement as in `east-ds run`, for the engines only (their own placement group, as placement.mode=split):
placement.ray_address (--ray-address wins), schedule_timeout_s, wait_for_resources and engine_resources are
honoured. Engines the whole cluster can never hold fail at once (exit 2), naming what they need and what the
cluster has, unless placement.wait_for_resources=true.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rollout.n=4")
    p.add_argument("--config", help="run config YAML (sections model, data, rollout, evaluation, placement)")
    p.add_argument("--model", help="hub name or local HF model directory (model.path)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model.dtype")
    p.add_argument("--data", help="GSM8K/MATH JSONL or Parquet file, or hub dataset name")
    p.add_argument("--format", choices=["gsm8k", "math"], help="data.format")
    p.add_argument("--split", help="split when --data is a hub dataset")
    p.add_argument("--limit", type=int, help="use only the first k questions")
    p.add_argument("--system-prompt", help="data.system_prompt")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-engines", type=int, help="rollout.num_engines")
    p.add_argument("--tensor-parallel-size", type=int, help="rollout.tensor_parallel_size")
    p.add_argument("--max-model-len", type=int, help="rollout.max_model_len")
    p.add_argument("--ray-address", default="", help="join this Ray cluster ('auto'); default: placement.ray_address, "
                   "else start a local one")


def add_rollout_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rollout", help="sample n responses per question into rollouts.parquet",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--n", type=int, help="samples per question")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--shard-size", type=int)
    p.add_argument("--out", required=True, help="output directory (rollouts.parquet, shards/)")
    p.set_defaults(func=run_rollout_cli)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="greedy accuracy of a model on a test set",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--out", required=True, help="output table (eval.parquet)")
    p.set_defaults(func=run_eval_cli)
    return p


def _configs(args, eval_mode: bool):
    """(ModelConfig, DataConfig, RolloutConfig, source, split, limit, eval max_new_tokens, PlacementConfig) from
    config file, overrides and flags (--ray-address, when given, wins over placement.ray_address)."""
    from east_ds.config import load_config

    run = load_config(args.config, args.overrides)
    model = run.model
    if args.model:
        model = dataclasses.replace(model, path=args.model)
    if args.dtype:
        model = dataclasses.replace(model, dtype=args.dtype)
    data = run.data
    source = args.data or (data.test if eval_mode else data.train)
    split = args.split or (data.test_split if eval_mode else data.train_split)
    limit = args.limit if args.limit is not None else (data.test_limit if eval_mode else data.train_limit)
    data = dataclasses.replace(data, format=args.format or data.format,
                               system_prompt=args.system_prompt or data.system_prompt)
    flags = {"num_engines": args.num_engines, "tensor_parallel_size": args.tensor_parallel_size,
             "max_model_len": args.max_model_len, "max_new_tokens": args.max_new_tokens}
    for name in ("n", "temperature", "top_p", "seed", "shard_size"):
        flags[name] = getattr(args, name, None)
    rollout = dataclasses.replace(run.rollout, **{k: v for k, v in flags.items() if v is not None})
    eval_tokens = args.max_new_tokens or run.evaluation.max_new_tokens
    if not model.path:
        raise SystemExit("no model: pass --model or set model.path")
    if not source:
        raise SystemExit("no data: pass --data or set data.train / data.test")
    placement = run.placement
    if args.ray_address:
        placement = dataclasses.replace(placement, ray_address=args.ray_address)
    return model, data, rollout, source, split, limit, eval_tokens, placement


def engine_need(rollout, placement, gpus: float, cores: int | None = None):
    """What EnginePool asks Ray for: the engines' cluster.Need as `east-ds run` computes it in split mode (their
    own placement group of num_engines x tensor_parallel_size bundles {GPU: 1, CPU: 1, **engine_resources}, PACK,
    on a cluster with GPUs; without GPUs one-CPU actors, at most `cores // tensor_parallel_size` of them, as the
    pool caps them; `cores` defaults to this machine's). Pure: no Ray."""
    from east_ds.cluster.placement import cpu_engines, placement_needs
    from east_ds.config import TrainConfig

    if not gpus:
        rollout = dataclasses.replace(rollout, num_engines=cpu_engines(rollout.num_engines,
                                                                       rollout.tensor_parallel_size, cores))
    split = dataclasses.replace(placement, mode="split")  # the engines only: no trainer shares their bundles
    return placement_needs(rollout, TrainConfig(), split, gpus)[0]


def check_engines_fit(need, total: dict, free: dict, wait: bool, timeout_s: float) -> str:
    """Raise cluster.SchedulingTimeout when the whole cluster (`total`) can never hold the engines, unless `wait`
    (an autoscaling cluster). Return the one-line note to print when what is `free` now is short (the placement
    group then waits up to `timeout_s`), else ""."""
    from east_ds.cluster.placement import check_fit

    return check_fit([need], total, free, wait, timeout_s, "these engines")


def _start(model, rollout, placement):
    """Check the model path (before Ray), start Ray, check the cluster can hold the engines (before any actor
    starts), then start the pool; return (pool, tokenizer)."""
    from transformers import AutoTokenizer

    from east_ds.cluster.placement import free_resources, total_resources
    from east_ds.data.load import check_model_path
    from east_ds.rollout.engine_pool import EnginePool
    from east_ds.cluster.ray_utils import cluster_gpus, init_ray

    check_model_path(model.path)
    tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    init_ray(placement.ray_address)
    need = engine_need(rollout, placement, cluster_gpus())
    note = check_engines_fit(need, total_resources(), free_resources(), placement.wait_for_resources,
                             placement.schedule_timeout_s)
    if note:
        print(note, flush=True)
    pool = EnginePool(model.path, rollout, model, need=need, schedule_timeout_s=placement.schedule_timeout_s,
                      resources=placement.engine_resources)
    return pool, tokenizer


def _run_stage(args, eval_mode: bool, stage) -> int:
    """Resolve the config, load the questions, start the engines, run `stage`, always shut the engines down.
    Bad input (missing model or data, bad config) and engines the cluster can never hold exit with status 2
    before any engine starts; so do engines not scheduled within placement.schedule_timeout_s."""
    from east_ds.cluster.placement import SchedulingTimeout
    from east_ds.data.load import load_dataset

    try:
        model, data, rollout, source, split, limit, eval_tokens, placement = _configs(args, eval_mode=eval_mode)
        questions = load_dataset(source, data.format, split, limit)
        pool, tokenizer = _start(model, rollout, placement)
    except (FileNotFoundError, ValueError, SchedulingTimeout) as e:  # never placeable, or not placed in time
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        stage(pool, questions, tokenizer, data, rollout, eval_tokens)
    finally:
        pool.shutdown()
    return 0


def run_rollout_cli(args) -> int:
    from east_ds.rollout.stage import run_rollout

    def stage(pool, questions, tokenizer, data, rollout, _):
        df = run_rollout(pool, questions, tokenizer, rollout, args.out, data.system_prompt)
        stats = df.attrs["stats"]
        print(json.dumps({k: v for k, v in stats.items() if k != "generated_shard_ids"}))
        print(f"wrote {Path(args.out) / 'rollouts.parquet'} ({len(df)} rows)")

    return _run_stage(args, False, stage)


def run_eval_cli(args) -> int:
    from east_ds.rollout.stage import run_eval

    def stage(pool, questions, tokenizer, data, _, eval_tokens):
        metrics = run_eval(pool, questions, tokenizer, eval_tokens, args.out, data.system_prompt)
        print(json.dumps(metrics))
        print(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} questions; wrote {args.out}")

    return _run_stage(args, True, stage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m east_ds.rollout.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_rollout_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
