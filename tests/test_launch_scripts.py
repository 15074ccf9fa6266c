"""The launch scripts as bash runs them, with stub programs: nothing starts Ray, DeepSpeed or SLURM.

- every script parses (`bash -n`);
- node_ipv4 (launch/lib.sh) picks the first non-loopback IPv4 of `hostname -I`, or NODE_IFACE's address, and fails
  on loopback-only hosts; ray_head.sh NODE_IP=auto uses it;
- iteration_deepspeed.sh names this job's GPUs (`--include localhost:4,5`) instead of `--num_gpus` when
  CUDA_VISIBLE_DEVICES is set, and with a hostfile writes ITER_DIR/.deepspeed_env for the remote ranks;
- train_deepspeed.sh hands the launcher absolute paths for relative path arguments, and warns about
  --num_gpus with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(p.name for p in [*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment minus what the scripts read (conftest sets DS_ACCELERATOR=cpu on CPU machines)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "HOSTFILE", "NO_SSH", "NUM_GPUS", "DS_ENV_FILE",
                        "NODE_IFACE", "NODE_IP", "RESUME")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)  # no ~/.deepspeed_env of the person running the tests
    env.update(extra)
    return env


@pytest.mark.parametrize("name", SCRIPTS)
def test_launch_script_parses(name: str) -> None:
    r = subprocess.run(["bash", "-n", str(LAUNCH / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- node_ipv4 -----------------------------------------------------------------------------------------------

@pytest.fixture
def fake_net(tmp_path: Path) -> Path:
    """A directory with `hostname` (-I prints $FAKE_ADDRS) and `ip` (eth1: 192.168.5.7, lo: 127.0.0.1) stubs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "hostname", 'if [[ "${1:-}" == -I ]]; then echo "$FAKE_ADDRS"; else echo fakehost; fi\n')
    _stub(bin_dir / "ip", """[[ "$*" == "-4 -o addr show dev "* ]] || { echo "ip stub: $*" >&2; exit 1; }
case "$6" in
  eth1) echo '3: eth1    inet 192.168.5.7/24 brd 192.168.5.255 scope global eth1\\       valid_lft forever' ;;
  lo)   echo '1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever' ;;
  *)    echo "Device \\"$6\\" does not exist." >&2; exit 1 ;;
esac
""")
    return bin_dir


def _node_ipv4(fake_net: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = _env(tmp_path, PATH=f"{fake_net}:{os.environ['PATH']}", **env)
    return subprocess.run(["bash", "-c", 'set -euo pipefail; source "$1"; node_ipv4', "x", str(LAUNCH / "lib.sh")],
                          env=env, capture_output=True, text=True)


def test_node_ipv4_skips_loopback_and_ipv6(fake_net: Path, tmp_path: Path) -> None:
    r = _node_ipv4(fake_net, tmp_path, FAKE_ADDRS="127.0.1.1 fe80::1 10.1.2.3 10.9.9.9 ")
    assert (r.returncode, r.stdout) == (0, "10.1.2.3\n"), r.stderr


def test_node_ipv4_honours_node_iface(fake_net: Path, tmp_path: Path) -> None:
    r = _node_ipv4(fake_net, tmp_path, FAKE_ADDRS="10.1.2.3", NODE_IFACE="eth1")
    assert (r.returncode, r.stdout) == (0, "192.168.5.7\n"), r.stderr


@pytest.mark.parametrize("addrs, iface", [("127.0.1.1 ::1", ""), ("", ""), ("10.1.2.3", "lo"), ("10.1.2.3", "eth7")])
def test_node_ipv4_fails_without_a_non_loopback_ipv4(fake_net: Path, tmp_path: Path, addrs: str, iface: str) -> None:
    r = _node_ipv4(fake_net, tmp_path, FAKE_ADDRS=addrs, NODE_IFACE=iface)
    assert r.returncode != 0 and r.stdout == ""
    assert "node_ipv4: no non-loopback IPv4 address" in r.stderr


def test_ray_head_node_ip_auto_uses_node_ipv4(fake_net: Path, tmp_path: Path) -> None:
    ray = _stub(tmp_path / "ray", 'printf "%s\\n" "$@"\n')
    env = _env(tmp_path, PATH=f"{fake_net}:{os.environ['PATH']}", FAKE_ADDRS="127.0.1.1 10.1.2.3",
               NODE_IP="auto", RAY_BIN=str(ray), RAY_AUTH_TOKEN="t")
    r = subprocess.run(["bash", str(LAUNCH / "ray_head.sh"), "worker", "10.0.0.1:6379", "--temp-dir=/tmp/ray_7"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["start", "--address=10.0.0.1:6379", "--node-ip-address=10.1.2.3",
                                        "--disable-usage-stats"]
    assert "--temp-dir=/tmp/ray_7" in r.stdout.split("\n")


def test_slurm_sbatch_steps_get_cpus_and_per_job_ports() -> None:
    text = (LAUNCH / "slurm_ray.sbatch").read_text()
    logical = text.replace("\\\n", " ").splitlines()  # continuation lines joined
    steps = [line for line in logical if "srun " in line and not line.lstrip().startswith("#")]
    starts = [s for s in steps if "node_ipv4" not in s and "ray status" not in s]  # head, worker, job, driver
    assert len(steps) == 6 and len(starts) == 4
    assert all('--cpus-per-task="$CPUS_PER_NODE"' in s for s in starts), starts
    assert "#SBATCH --exclusive" in text and "#SBATCH --mem=0" in text and "hostname --ip-address" not in text
    assert text.count('--temp-dir="$RAY_TEMP_DIR"') == 2 and "SLURM_JOB_ID % 1000" in text


# ---- iteration_deepspeed.sh ----------------------------------------------------------------------------------

@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    """DEEPSPEED records its argv (one per line) and DS_ENV_FILE in $STUB_LOG; EAST_DS touches each stage's output."""
    log = tmp_path / "deepspeed.argv"
    deepspeed = _stub(tmp_path / "deepspeed",
                      f'printf "%s\\n" "$@" > {log}; echo "DS_ENV_FILE=${{DS_ENV_FILE:-}}" >> {log}\n')
    east_ds = _stub(tmp_path / "east-ds", """out=
while [[ $# -gt 0 ]]; do [[ "$1" == --out ]] && out=$2; shift; done
case "$out" in *.parquet) touch "$out" ;; *) touch "$out/rollouts.parquet" "$out/examples.parquet" ;; esac
""")
    return {"DEEPSPEED": str(deepspeed), "EAST_DS": str(east_ds), "LOG": str(log)}


def _iteration(tmp_path: Path, stubs: dict[str, str], **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = _env(tmp_path, DEEPSPEED=stubs["DEEPSPEED"], EAST_DS=stubs["EAST_DS"], TEST_DATA="", **env)
    r = subprocess.run(["bash", str(LAUNCH / "iteration_deepspeed.sh"), "base-model", "iter_1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    log = Path(stubs["LOG"])
    return r, log.read_text().splitlines() if log.exists() else []


def test_iteration_names_visible_gpus_with_include(tmp_path: Path, stubs: dict[str, str]) -> None:
    r, argv = _iteration(tmp_path, stubs, CUDA_VISIBLE_DEVICES="4,5", NUM_GPUS="2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert argv[:2] == ["--include", "localhost:4,5"] and "--num_gpus" not in argv
    assert argv[argv.index("--examples") + 1] == "iter_1/examples.parquet"
    assert "DS_ENV_FILE=" in argv and not (tmp_path / "iter_1" / ".deepspeed_env").exists()


def test_iteration_takes_the_first_num_gpus_visible_gpus(tmp_path: Path, stubs: dict[str, str]) -> None:
    r, argv = _iteration(tmp_path, stubs, CUDA_VISIBLE_DEVICES="6,7,2,3", NUM_GPUS="2")
    assert r.returncode == 0, r.stderr
    assert argv[:2] == ["--include", "localhost:6,7"]


@pytest.mark.parametrize("visible", ["4,5", "GPU-0a1b2c3d,GPU-4e5f6a7b"])
def test_iteration_refuses_too_few_or_non_index_visible_gpus(tmp_path: Path, stubs: dict[str, str],
                                                             visible: str) -> None:
    r, argv = _iteration(tmp_path, stubs, CUDA_VISIBLE_DEVICES=visible, NUM_GPUS="4" if visible == "4,5" else "2")
    assert r.returncode == 2 and argv == []
    assert "CUDA_VISIBLE_DEVICES" in r.stderr


@pytest.mark.parametrize("extra", [{}, {"CUDA_VISIBLE_DEVICES": "4,5", "DS_ACCELERATOR": "cpu"}])
def test_iteration_num_gpus_without_visible_gpus_or_on_cpu(tmp_path: Path, stubs: dict[str, str],
                                                           extra: dict[str, str]) -> None:
    r, argv = _iteration(tmp_path, stubs, NUM_GPUS="2", **extra)
    assert r.returncode == 0, r.stderr
    assert argv[:2] == ["--num_gpus", "2"] and "--include" not in argv


def _parse_like_runner(path: Path) -> dict[str, str]:
    """deepspeed/launcher/runner.py: every line split at the first '=', key and value stripped."""
    out = {}
    for line in path.read_text().splitlines(keepends=True):
        key, val = line.split("=", maxsplit=1)
        out[key.strip()] = val.strip()
    return out


def test_iteration_with_hostfile_writes_deepspeed_env(tmp_path: Path, stubs: dict[str, str]) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".deepspeed_env").write_text("MY_VAR=mine\n\nHF_HOME=/from/home/file\n")
    r, argv = _iteration(tmp_path, stubs, HOSTFILE="hf", CUDA_VISIBLE_DEVICES="4,5", HF_HOME="/shared/hf",
                         HF_TOKEN="hf_secret", TORCH_HOME="/shared/torch", OMP_NUM_THREADS="4",
                         LD_LIBRARY_PATH="/opt/cuda/lib64:/usr/lib", DS_SKIP_CUDA_CHECK="1", NOT_FORWARDED="x")
    assert r.returncode == 0, r.stderr
    env_file = tmp_path / "iter_1" / ".deepspeed_env"
    assert argv[:2] == ["--hostfile", "hf"] and "--include" not in argv and "--num_gpus" not in argv
    assert f"DS_ENV_FILE={env_file}" in argv  # absolute: runner.py's joins with ~ and . both give this file
    lines = env_file.read_text().splitlines()
    assert "HF_HOME=/shared/hf" in lines and "TORCH_HOME=/shared/torch" in lines and "OMP_NUM_THREADS=4" in lines
    assert "LD_LIBRARY_PATH=/opt/cuda/lib64:/usr/lib" in lines and "DS_SKIP_CUDA_CHECK=1" in lines
    assert not any(line.startswith(("NOT_FORWARDED=", "DS_ENV_FILE=")) for line in lines)
    parsed = _parse_like_runner(env_file)  # no blank line: the runner would fail on it
    assert parsed["MY_VAR"] == "mine" and parsed["HF_HOME"] == "/from/home/file"  # ~/.deepspeed_env still wins
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # HF_TOKEN may be in it
    assert not (tmp_path / ".deepspeed_env").exists()  # nothing in the caller's directory


def test_iteration_no_ssh_writes_no_deepspeed_env(tmp_path: Path, stubs: dict[str, str]) -> None:
    r, argv = _iteration(tmp_path, stubs, HOSTFILE="hf", NO_SSH="1", MASTER_ADDR="10.0.0.1", HF_HOME="/shared/hf")
    assert r.returncode == 0, r.stderr
    assert "--no_ssh" in argv and "DS_ENV_FILE=" in argv
    assert not (tmp_path / "iter_1" / ".deepspeed_env").exists()


# ---- train_deepspeed.sh --------------------------------------------------------------------------------------

def _train(tmp_path: Path, stubs: dict[str, str], args: list[str], **env: str) -> tuple[subprocess.CompletedProcess,
                                                                                      list[str]]:
    cwd = tmp_path / "work"
    cwd.mkdir(exist_ok=True)
    r = subprocess.run(["bash", str(LAUNCH / "train_deepspeed.sh"), *args], cwd=cwd,
                       env=_env(tmp_path, DEEPSPEED=stubs["DEEPSPEED"], **env), capture_output=True, text=True)
    log = Path(stubs["LOG"])
    return r, log.read_text().splitlines() if log.exists() else []


def test_train_deepspeed_makes_relative_paths_absolute(tmp_path: Path, stubs: dict[str, str]) -> None:
    cwd = tmp_path / "work"
    (cwd / "models" / "m").mkdir(parents=True)
    r, argv = _train(tmp_path, stubs, ["--num_gpus", "2", "--config", "cfg.yaml", "--examples", "data/ex.parquet",
                                       "--model", "models/m", "--out=runs/out", "training.lr=1e-6"])
    assert r.returncode == 0, r.stderr
    assert argv[:3] == ["--num_gpus", "2", "--module"] and argv[3] == "east_ds.train"
    assert argv[4:11] == ["--config", f"{cwd}/cfg.yaml", "--examples", f"{cwd}/data/ex.parquet",
                          "--model", f"{cwd}/models/m", f"--out={cwd}/runs/out"]
    assert argv[11] == "training.lr=1e-6"


def test_train_deepspeed_keeps_hub_names_and_absolute_paths(tmp_path: Path, stubs: dict[str, str]) -> None:
    r, argv = _train(tmp_path, stubs, ["--include", "localhost:4,5", "--examples", "/abs/ex.parquet",
                                       "--model", "org/some-model", "--out", "out"])
    assert r.returncode == 0, r.stderr
    assert argv[:4] == ["--include", "localhost:4,5", "--module", "east_ds.train"]
    assert argv[4:10] == ["--examples", "/abs/ex.parquet", "--model", "org/some-model", "--out",
                          f"{tmp_path}/work/out"]


def test_train_deepspeed_warns_num_gpus_with_visible_devices(tmp_path: Path, stubs: dict[str, str]) -> None:
    r, _ = _train(tmp_path, stubs, ["--num_gpus", "2", "--examples", "e", "--out", "o"], CUDA_VISIBLE_DEVICES="4,5")
    assert r.returncode == 0 and "--include localhost:4,5 instead of --num_gpus" in r.stderr
    r, _ = _train(tmp_path, stubs, ["--include", "localhost:4,5", "--examples", "e", "--out", "o"],
                  CUDA_VISIBLE_DEVICES="4,5")
    assert r.returncode == 0 and "warning" not in r.stderr


def test_train_deepspeed_with_hostfile_writes_deepspeed_env(tmp_path: Path, stubs: dict[str, str]) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hf").write_text("node-0 slots=8\n")
    r, argv = _train(tmp_path, stubs, ["--hostfile", "hf", "--examples", "e", "--out", "o"], HF_HOME="/shared/hf")
    assert r.returncode == 0, r.stderr
    env_file = tmp_path / "work" / "o" / ".deepspeed_env"
    assert argv[:2] == ["--hostfile", f"{tmp_path}/work/hf"] and f"DS_ENV_FILE={env_file}" in argv
    parsed = _parse_like_runner(env_file)
    assert parsed["HF_HOME"] == "/shared/hf" and parsed["TOKENIZERS_PARALLELISM"] == "false"
