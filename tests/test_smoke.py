"""`east-ds check CONFIG --smoke` on logical GPUs: every GPU path it knows runs here on the CPU and passes, except
the one that needs real CUDA, which says so; the output is one row per path."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.cluster
def test_smoke_check_runs_every_gpu_path_on_logical_gpus(tmp_path):
    env = {**os.environ, "EAST_DS_NO_TQDM": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "east_ds.cli", "check", str(ROOT / "configs/demo_cpu.yaml"),
                          f"output_dir={tmp_path}", "--smoke", "--logical-gpus", "2"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    rows = dict(re.findall(r"^  (\S.*?)\s{2,}(passed|FAILED|skipped)\b", out.stdout, re.M))
    assert rows == {"split + broadcast": "passed", "colocated sleep/wake": "passed", "tensor parallel 2": "passed",
                    "object_store + TP 2": "passed", "eager vs CUDA graphs": "skipped"}, out.stdout + out.stderr[-3000:]
    assert out.returncode == 0
    assert "needs CUDA" in out.stdout and "output equals a reload" in out.stdout
    assert re.search(r"colocated sleep/wake .*awake: no CUDA; asleep: no CUDA", out.stdout)
    # TP 2 gives TP 1's greedy answers on the start weights and, after a reload from disk, on the new ones (so
    # both workers took the new weights: a worker left on the old half of each layer would change the output)
    tp = re.search(r"^  tensor parallel 2 .*$", out.stdout, re.M).group(0)
    assert "equals one GPU's output before and after the update: yes" in tp, tp
    assert re.search(r"\(threads \S+\|\S+\)", tp), tp  # each TP worker bound to cores of its own
    assert not list(tmp_path.glob("smoke_*"))  # the tiny models are removed afterwards


def test_paths_the_cluster_cannot_take_are_skipped_with_the_reason():
    from east_ds.checks.smoke import PATHS, skip_reason

    assert {p: skip_reason(p, 1, on_gpu=True) for p in PATHS} == {
        "split + broadcast": "needs 2 GPU(s); the cluster has 1", "colocated sleep/wake": "",
        "tensor parallel 2": "needs 2 GPU(s); the cluster has 1",
        "object_store + TP 2": "needs 2 GPU(s); the cluster has 1",
        "eager vs CUDA graphs": ""}
    assert skip_reason("eager vs CUDA graphs", 8, on_gpu=False) == "needs CUDA (this node's GPUs are logical)"
    assert all(skip_reason(p, 0, on_gpu=False) for p in PATHS)  # no GPUs at all: nothing to smoke-test
    assert not any(skip_reason(p, 2, on_gpu=True) for p in PATHS)
