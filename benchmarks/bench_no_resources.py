"""How long `east-ds run` takes to report that the cluster cannot hold the run (issue 8 item 2).

A private Ray head advertising 1 logical GPU (`ray start --head --num-gpus 1 --block`, own temp dir, free ports,
token auth on); `east-ds run` asks for 4 engines. Timed, each `--repeats` times, in the same command:
  connect     baseline: a Python process that imports ray and joins the head (what any run pays first)
  fail_fast   the default: the needs exceed the whole cluster, so the run stops before starting anything
  timeout     placement.wait_for_resources=true, schedule_timeout_s=T: the engines' placement group waits T s
Before this change the run waited silently for ever (still waiting after 240 s, issue 8).

    python benchmarks/bench_no_resources.py --repeats 5 --timeout 10
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def timed(cmd: list[str], env: dict, expect: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if r.returncode != expect:
        raise SystemExit(f"{cmd} exited {r.returncode}, expected {expect}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=10.0, help="placement.schedule_timeout_s for the timeout case")
    args = ap.parse_args()

    import pandas as pd

    from east_ds.data.synthetic import make_problems, to_gsm8k_rows
    from east_ds.tables import write_table
    from east_ds.data.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="enores", dir="/tmp"))
    model = build_tiny_model(work / "model")
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(8, seed=1))), work / "train.jsonl")
    (work / "run.yaml").write_text("iterations: 1\n")
    gcs, client, agent = free_ports(3)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-gpus=1", "--num-cpus=8", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={work / 'ray'}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    connect = [sys.executable, "-c", f"import ray; ray.init(address='{address}')"]
    run = [sys.executable, "-m", "east_ds.cli", "run", str(work / "run.yaml"), f"model.path={model}",
           f"data.train={work / 'train.jsonl'}", f"output_dir={work / 'runs'}", "evaluation.every_iteration=false",
           "rollout.num_engines=4", "placement.mode=split", f"placement.ray_address={address}"]
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(connect, env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("ray head did not come up")
            time.sleep(1)
        cases = {"connect": (connect, 0),
                 "fail_fast": (run + ["name=fast"], 2),
                 "timeout": (run + ["name=wait", "placement.wait_for_resources=true",
                                    f"placement.schedule_timeout_s={args.timeout}"], 2)}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
            for name, (cmd, rc) in cases.items():
                times[name].append(timed(cmd, env, rc))
        print(f"cluster: 1 logical GPU; asked: 4 engines (split); repeats {args.repeats}; "
              f"schedule_timeout_s {args.timeout:g} for the timeout case")
        base = statistics.median(times["connect"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:10s} median {med:6.1f} s  min {min(ts):6.1f}  max {max(ts):6.1f}  "
                  f"(median - connect: {med - base:5.1f} s)")
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
