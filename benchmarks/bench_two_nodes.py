"""One EAST iteration on a one-node Ray cluster against the same iteration on two nodes (engines on one, the
trainer on the other), two network namespaces on this machine standing in for two hosts.

    sudo .venv/bin/python benchmarks/bench_two_nodes.py [--repeats 3] [--out /tmp/bench_two_nodes] [--model M]

Needs root (network namespaces: tests/netns.py). Both modes run the same config and the same command, from node
a: `launch/ray_job.sh CONFIG name=<mode>_<k>` (the demo's warm-started tiny model and data, one iteration, no
evaluation, engines asking for the resource node_b and trainer ranks for node_a). Only the cluster differs:
  one node:  the head in namespace a advertises node_a and node_b, so everything runs there;
  two nodes: the head (node_a) in namespace a, a worker (node_b) in namespace b; Ray, the object store and the
             weight files' readers talk over the veth pair.
Modes alternate, each repeat on freshly started clusters, so machine load drifts over both alike. Printed per
run: the job's wall seconds and the driver's iteration seconds with its phases; then per mode the median and the
range (spread), the ratio of the medians, and the ratio within each repeat's back-to-back pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the namespace harness of the tests

PHASES = ("rollout", "weigh", "train", "update_weights")


def config(out: Path, n_train: int, model: str | None) -> Path:
    from east_ds.config import to_dict
    from east_ds.demo import demo_config, prepare, write_demo_data

    if model:  # an already warm-started model (e.g. a previous --out's warm_start)
        train, test, _ = write_demo_data(out / "data", n_train, 8, 0)
        start = Path(model)
    else:
        train, test, start = prepare(out, n_train, 8)
    cfg = to_dict(demo_config(out / "runs", "bench", 1.0, start, train, test, 1, (
        "evaluation.every_iteration=false", "placement.mode=split")))
    cfg["placement"]["engine_resources"] = {"node_b": 1}
    cfg["placement"]["trainer_resources"] = {"node_a": 1}
    path = out / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_once(out: Path, cfg: Path, mode: str, k: int) -> dict:
    from netns import RayCluster, TwoHosts

    name = f"{mode}_{k}"
    resources = ({"a": {"node_a": 8, "node_b": 8}} if mode == "one_node"
                 else {"a": {"node_a": 8}, "b": {"node_b": 8}})
    with TwoHosts() as hosts:
        ray = RayCluster(hosts, out, resources, two_nodes=mode == "two_nodes")
        t0 = time.perf_counter()
        job = ray.submit(cfg, f"bench-{name}", out / f"{name}.log", f"name={name}")
        rc = job.wait()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{name}: the job failed (rc {rc}); see {out / (name + '.log')}")
    m = json.loads((out / "runs" / name / "iter_1" / "metrics.json").read_text())
    return {"mode": mode, "repeat": k, "job_seconds": wall, "iteration_seconds": m["iteration_seconds"],
            **{p: m["phase_seconds"].get(p, 0.0) for p in PHASES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_two_nodes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-questions", type=int, default=64)
    ap.add_argument("--model", help="a warm-started model to use instead of building the demo's under --out")
    args = ap.parse_args()
    from netns import netns_unavailable

    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"bench_two_nodes: {reason}")
    out = Path(args.out).resolve()
    cfg = config(out, args.train_questions, args.model and str(Path(args.model).resolve()))
    rows = []
    for k in range(args.repeats):
        for mode in ("one_node", "two_nodes") if k % 2 == 0 else ("two_nodes", "one_node"):
            rows.append(run_once(out, cfg, mode, k))
            r = rows[-1]
            print(f"{r['mode']:>9} #{k}: job {r['job_seconds']:6.1f} s, iteration {r['iteration_seconds']:6.1f} s ("
                  + ", ".join(f"{p} {r[p]:.1f}" for p in PHASES) + ")", flush=True)
    print(f"\n{args.train_questions} questions x n=16, 1 iteration, {args.repeats} repeats per mode")
    med = {}
    for mode in ("one_node", "two_nodes"):
        for key in ("job_seconds", "iteration_seconds", *PHASES):
            xs = [r[key] for r in rows if r["mode"] == mode]
            med[mode, key] = statistics.median(xs)
            print(f"{mode:>9} {key:>17}: median {med[mode, key]:6.1f} s, range {min(xs):6.1f}-{max(xs):6.1f}")
    for key in ("job_seconds", "iteration_seconds"):
        # each repeat's pair ran back to back, so its ratio cancels most of the drift in machine load
        pairs = [two[key] / one[key] for one, two in zip([r for r in rows if r["mode"] == "one_node"],
                                                          [r for r in rows if r["mode"] == "two_nodes"])]
        print(f"two nodes / one node, {key}: ratio of medians {med['two_nodes', key] / med['one_node', key]:.2f}; "
              f"per repeat {', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f})")


if __name__ == "__main__":
    main()
