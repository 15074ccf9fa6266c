"""Where an EAST iteration spends its time: the demo's iteration broken down by phase, and the driver's own
overhead (iteration wall time minus the sum of its timed phases).

    .venv/bin/python benchmarks/bench_iteration.py [--out runs/bench_iteration] [--iterations 2]

It warm-starts the demo's tiny model (once; reused under --out), runs the driver with the
demo config (EAST, a = 1) and prints, per iteration, each phase's seconds and share of the iteration. Targets:
grading and weighting under 5% of an iteration, weight update under 2%. Everything runs in this one command;
the shares are ratios within the same iteration, so machine noise mostly cancels.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

PHASES = ("rollout", "weigh", "reference", "train", "update_weights", "evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_iteration")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--train-questions", type=int, default=800)
    ap.add_argument("--loss", default="sft", choices=["sft", "dpo", "kto"])
    args = ap.parse_args()

    from east_ds.demo import demo_config, prepare
    from east_ds.driver import run

    out = Path(args.out)
    run_dir = out / "east"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # measure fresh phases, not skipped ones
    train, test, start = prepare(out, args.train_questions, 500)  # the demo's data and warm start
    cfg = demo_config(out, "east", 1.0, start, train, test, args.iterations, (f"training.loss={args.loss}",))
    log = run(cfg)

    print(f"\nPer-phase time of each iteration (loss {args.loss}, {args.train_questions} questions x "
          f"n={cfg.rollout.n}):")
    header = f"{'iter':>4} {'total s':>8} " + " ".join(f"{p:>16}" for p in PHASES) + f" {'driver':>14}"
    print(header)
    for m in log:
        if m["iteration"] == 0:
            continue
        total = m["iteration_seconds"]
        secs = m["phase_seconds"]
        cells = []
        for p in PHASES:
            s = secs.get(p, 0.0)
            cells.append(f"{s:7.2f} ({100 * s / total:4.1f}%)")
        overhead = total - sum(secs.values())
        print(f"{m['iteration']:>4} {total:8.2f} " + " ".join(f"{c:>16}" for c in cells)
              + f" {overhead:6.2f} ({100 * overhead / total:4.1f}%)")


if __name__ == "__main__":
    main()
