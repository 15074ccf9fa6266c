"""Start-up of a run's actors: the rollout engines and the trainer ranks one after the other (what the driver did
before) against side by side (what `east-ds run` does when the cluster holds both and they share no GPU).

    .venv/bin/python benchmarks/bench_startup.py [--engines 1] [--ranks 1] [--min-pairs 4] [--max-seconds 900]

One local Ray and one tiny model built on the fly. A round starts an EnginePool and a TrainerGroup with the
driver's own arguments for a CPU machine (split: nothing shared) and stops when both answer, then shuts both
down; the seconds to "both ready" are the round's figure. Rounds alternate in pairs (sequential first in even
pairs) after one warm-up round of each, until at least --min-pairs pairs are done and the spread (max - min) of
the per-pair ratio sequential/concurrent is below its median's distance from 1.0, or the next pair would pass
--max-seconds. Prints every round, the ratios, their median and spread, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0", "EAST_DS_NO_TQDM": "1",
             "DS_ACCELERATOR": "cpu", "VLLM_LOGGING_LEVEL": "ERROR"}.items():
    os.environ.setdefault(k, v)


def one_round(model: str, cfg, concurrent: bool) -> float:
    from east_ds.cluster.placement import Placement
    from east_ds.rollout.engine_pool import EnginePool
    from east_ds.training.actors import TrainerGroup

    placement = Placement.of(cfg, 0)
    start_pool = lambda: EnginePool(model, placement.rollout_config(cfg.rollout), cfg.model,  # noqa: E731
                                    **placement.engine_options())
    start_group = lambda: TrainerGroup(model, cfg.training, cfg.model, cfg.training.num_ranks,  # noqa: E731
                                       **placement.trainer_options())
    t0 = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(2) as ex:
            pool_f, group_f = ex.submit(start_pool), ex.submit(start_group)
        pool, group = pool_f.result(), group_f.result()
    else:
        pool = start_pool()
        group = start_group()
    seconds = time.perf_counter() - t0
    group.shutdown()
    pool.shutdown()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--min-pairs", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    args = ap.parse_args()

    from east_ds.cluster.ray_utils import init_ray
    from east_ds.config import load_config
    from east_ds.data.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    model = str(build_tiny_model(root / "tiny"))
    cfg = load_config(None, [f"model.path={model}", "model.dtype=float32", "placement.mode=split",
                             f"rollout.num_engines={args.engines}", f"training.num_ranks={args.ranks}",
                             "training.global_batch_size=4", "training.micro_batch_size=1",
                             f"training.gradient_accumulation_steps={4 // args.ranks}",
                             "rollout.max_model_len=256"])
    init_ray()
    for concurrent in (False, True):  # warm-up: page cache, Ray's worker pool
        one_round(model, cfg, concurrent)
    ratios, rounds, spent = [], [], 0.0
    while True:
        pair = {}
        order = (False, True) if len(ratios) % 2 == 0 else (True, False)
        for concurrent in order:
            pair[concurrent] = one_round(model, cfg, concurrent)
            rounds.append({"concurrent": concurrent, "seconds": pair[concurrent]})
            print(f"{'side by side' if concurrent else 'one by one  '}  {pair[concurrent]:6.2f} s", flush=True)
        spent += pair[False] + pair[True]
        ratios.append(pair[False] / pair[True])
        median = statistics.median(ratios)
        spread = max(ratios) - min(ratios)
        print(f"pair {len(ratios)}: one by one / side by side = {ratios[-1]:.3f}  (median {median:.3f}, "
              f"spread {spread:.3f})", flush=True)
        if len(ratios) >= args.min_pairs and spread < abs(median - 1.0):
            break
        if spent * (len(ratios) + 1) / len(ratios) > args.max_seconds:
            print("stopped at --max-seconds before the spread fell below the effect", flush=True)
            break
    seq = statistics.median(r["seconds"] for r in rounds if not r["concurrent"])
    par = statistics.median(r["seconds"] for r in rounds if r["concurrent"])
    print(json.dumps({"engines": args.engines, "ranks": args.ranks, "pairs": len(ratios),
                      "median_one_by_one_s": round(seq, 2), "median_side_by_side_s": round(par, 2),
                      "median_ratio": round(statistics.median(ratios), 3),
                      "spread": round(max(ratios) - min(ratios), 3), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
