"""Shared fixtures. Heavy ones (models, Ray) are session-scoped and built on the fly: nothing is downloaded."""

import os

import pytest


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if not _cuda():  # on a GPU machine DeepSpeed picks CUDA itself; the `gpu`-marked tests need it
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# `make test` runs the suite on two xdist workers, each taking whole modules (`--dist loadfile`) in this order:
# the modules that run the real pipeline first, longest first (seconds measured with `--durations`), those that
# need the session's warm-started model alternating with those that do not, so that neither worker waits long for
# it and neither is left with a long module at the end. Every module not named keeps its collection order after
# them; without xdist the order is the same.
LONGEST_FIRST = ("test_two_nodes.py", "test_train_engine.py", "test_driver.py", "test_smoke.py", "test_study.py",
                 "test_divergence.py", "test_lora.py", "test_rollout_weights.py", "test_placement.py", "test_bench.py",
                 "test_rollout_pool.py", "test_driver_logic.py", "test_rollout_cli_placement.py", "test_ray_job.py",
                 "test_gpu_plan.py", "test_compare.py", "test_cluster.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its own order


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from east_ds.data.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory):
    """A tiny model warm-started on the synthetic problems until it is right about a third of the time:
    its samples disagree, so entropy is informative and the filters keep questions. Built once per test run:
    under xdist the first worker to need it builds it (a file lock) and the others wait and share it."""
    from filelock import FileLock

    from east_ds.demo import warm_start
    from east_ds.data.synthetic import make_problems
    from east_ds.data.tiny import build_tiny_model

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    root = root / "warm_model"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / "build.lock")):
        if not (root / "warm" / "warm_start.json").is_file():  # written last
            base = build_tiny_model(root / "base", size="tiny", seed=0)
            warm_start(base, root / "warm", make_problems(2000, seed=3, prefix="warm"),
                       make_problems(8, seed=4, prefix="probe"), max_steps=200, check_every=10**9)
    return root / "warm"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, bound to 127.0.0.1."""
    import ray

    from east_ds.cluster.ray_utils import init_ray

    init_ray()
    yield ray
    ray.shutdown()


def free_ports(k: int) -> list[int]:
    """k distinct free TCP ports on 127.0.0.1 (never fixed ports: other people's tests share the machine)."""
    import socket

    socks = []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def logical_gpu_head():
    """A private Ray head advertising 2 logical GPUs on this CPU machine (`ray start --head --num-gpus 2 --block`,
    its own temp dir, free ports, token auth on); yields (address, env for clients). The test session's own
    `ray_session` has no GPUs, so the runs that need GPUs join this head from a subprocess.
    Stopped by SIGTERM to the --block process (never `ray stop`, which would stop everyone's Ray)."""
    import secrets
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    gcs, client, agent = free_ports(3)
    temp_dir = Path(tempfile.mkdtemp(prefix="egpu", dir="/tmp"))  # short: Ray's unix sockets live under it
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = temp_dir / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--num-gpus=2", "--num-cpus=8", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    probe = "import ray, sys; ray.init(address=sys.argv[1]); assert ray.cluster_resources().get('GPU') == 2"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray head exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True,
                              timeout=120).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"ray head at {address} not up after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield address, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of ours still alive (our own process group)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
