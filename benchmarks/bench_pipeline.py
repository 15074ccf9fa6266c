"""`east-ds bench` on the CPU demo's model: rollout, grading, training and weight-update throughput through the
real pipeline, with 1 and 2 engines and 1 and 2 trainer ranks.

    .venv/bin/python benchmarks/bench_pipeline.py [--out runs/bench_pipeline] [--prompts 64] [--steps 4] \
        [--engines 1,2] [--ranks 1,2] [--repeats 1]

It warm-starts the demo's tiny model (once; reused under --out), fills configs/demo_cpu.yaml with its paths
and calls east_ds.checks.bench.bench, which writes bench.json and bench.md under --out/run_<i>. With --repeats > 1 it
prints each figure's median and spread (max - min) over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_pipeline")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--engines", default="1,2")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from east_ds.checks.bench import bench
    from east_ds.demo import demo_config, prepare

    out = Path(args.out)
    train, test, start = prepare(out, 800, 500)  # the demo's data and warm start
    cfg = demo_config(out, "bench", 1.0, start, train, test, 1)
    engines = [int(x) for x in args.engines.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    results = [bench(cfg, out / f"run_{i}", args.prompts, args.steps, engines, ranks) for i in range(args.repeats)]
    print((out / "run_0" / "bench.md").read_text())
    figures = {f"rollout tokens/s, {x['engines']} engine(s)": [r["rollout"][i]["tokens_per_s"] for r in results]
               for i, x in enumerate(results[0]["rollout"])}
    figures.update({f"train tokens/s, {x['ranks']} rank(s)": [r["train"][i]["tokens_per_s"] for r in results]
                    for i, x in enumerate(results[0]["train"])})
    figures["grading responses/s"] = [r["grade_responses_per_s"] for r in results]
    figures["weight update s"] = [r["weight_update_s"] for r in results]
    print(f"over {args.repeats} repeat(s): median (spread max - min)")
    for name, values in figures.items():
        print(f"  {name:<32} {statistics.median(values):10.2f} ({max(values) - min(values):.2f})")


if __name__ == "__main__":
    main()
