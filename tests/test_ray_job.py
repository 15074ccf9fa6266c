"""`launch/ray_job.sh` against a real local Ray head started by `launch/ray_head.sh` (token auth on, loopback).

The head is our own: `ray start --head --block` in its own session, with its own --temp-dir, ports and token.
It is shut down by SIGTERM to that process (Ray's `--block` mode then stops every process it started, and only
those); a SIGKILL to its process group follows if anything is left. We never call `ray stop`, which kills every
Ray instance on the machine, other engineers' tests included.

The job imports the installed east_ds and runs `east-ds weight` on a small rollouts JSONL shipped in the
working dir, writing to an absolute output directory the test then reads.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_ports
from east_ds.data.synthetic import make_problems

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _wait_for_jobs_api(url: str, token: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll the job API until it answers 200 with our token (the dashboard's job module starts last)."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray head exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"job API at {url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head on 127.0.0.1; yields (dashboard_url, env for clients)."""
    gcs_port, dash_port, client_port, agent_port = free_ports(4)
    # short path: Ray puts unix sockets under it (107-character limit)
    temp_dir = Path(tempfile.mkdtemp(prefix="eray", dir="/tmp"))
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the nodes' east-ds, python and ray
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,  # the same token on head and client; ~/.ray/auth_token is left alone
        "RAY_USAGE_STATS_ENABLED": "0",
        "NODE_IP": "127.0.0.1",
        "DASHBOARD_HOST": "127.0.0.1",
        "RAY_PORT": str(gcs_port),
        "DASHBOARD_PORT": str(dash_port),
        "NUM_CPUS": "2",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    log = temp_dir / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO / "launch" / "ray_head.sh"), "head", "--block", f"--temp-dir={temp_dir}",
             f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_for_jobs_api(url, token, proc, log)
        yield url, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # --block: Ray stops the processes of this node, and only those
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of ours still alive (our own session/process group)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _rollouts(path: Path) -> None:
    """6 questions x 4 samples: q0 all correct, q1 all wrong, the rest mixed (so 4 are kept)."""
    rows = []
    for i, p in enumerate(make_problems(6, seed=1)):
        gold = int(p.answer)
        for j in range(4):
            if i == 0:
                ans = gold
            elif i == 1:
                ans = gold + 1
            else:
                ans = gold if j < (i % 3) + 1 else gold + j  # 1-3 correct, the others spread over wrong answers
            rows.append({"question_id": p.question_id, "sample_index": j, "question": p.question,
                         "gold": p.answer, "response": f"Step by step ... so the answer is \\boxed{{{ans}}}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


JOB = """\
import subprocess, sys
import east_ds
print("EAST_DS_AT", east_ds.__file__, flush=True)
sys.exit(subprocess.call(["east-ds", "weight", "rollouts.jsonl", "--a", "1", "--loss", "sft", "--out", sys.argv[1]]))
"""


def test_ray_job_runs_east_ds_weight(ray_head, tmp_path):
    url, env = ray_head
    work = tmp_path / "job"  # the whole working dir: a script and a small table
    work.mkdir()
    (work / "job.py").write_text(JOB)
    _rollouts(work / "rollouts.jsonl")
    out = tmp_path / "weighted"

    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "launch" / "ray_job.sh"), "--address", url, "--working-dir", str(work),
                        "--job-id", "east-test-job", "--", "python", "job.py", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    logs = r.stdout + r.stderr
    assert r.returncode == 0, logs[-4000:]
    assert "succeeded" in logs, logs[-4000:]
    assert f"EAST_DS_AT {REPO / 'east_ds' / '__init__.py'}" in logs  # the job saw the installed package

    status = subprocess.run([str(VENV_BIN / "ray"), "job", "status", "--address", url, "east-test-job"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert "job 'east-test-job' succeeded" in (status.stdout + status.stderr).lower()
    job_logs = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", "--address", url, "east-test-job"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert "EAST_DS_AT" in job_logs.stdout

    questions = pd.read_parquet(out / "questions.parquet")
    assert len(questions) == 6
    assert int(questions["kept"].sum()) == 4
    assert questions.loc[questions["kept"], "weight"].mean() == pytest.approx(1.0)
    assert (out / "examples.parquet").is_file()
    print(f"ray job round trip: {time.monotonic() - t0:.1f}s")


def test_job_api_rejects_wrong_token(ray_head):
    url, env = ray_head
    r = subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", url],
                       env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Invalid authentication token" in r.stdout + r.stderr
