"""`east-ds check CONFIG --smoke` on logical GPUs, with vLLM's engine core in a process of its own as on GPUs:
every GPU path it knows runs here on the CPU and passes, except the one that needs real CUDA, which says so; the
output is one row per path, each checked against a fresh engine and labelled from what the actors report. Then
the rows' conclusions from those reports, on figures a GPU would give."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("colocated sleep/wake", "path", "object_store", "broadcast", "colocated TP 2, two ranks",
        "object_store + TP 2")


@pytest.mark.slow
@pytest.mark.cluster
def test_smoke_check_runs_every_gpu_path_on_logical_gpus(tmp_path):
    env = {**os.environ, "EAST_DS_NO_TQDM": "1", "VLLM_LOGGING_LEVEL": "ERROR",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # the engine core out of process, as on GPUs (the suite uses 0)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "east_ds.cli", "check", str(ROOT / "configs/demo_cpu.yaml"),
                          f"output_dir={tmp_path}", "--smoke", "--logical-gpus", "2"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    text = out.stdout + out.stderr[-3000:]
    rows = dict(re.findall(r"^  (\S.*?)\s{2,}(passed|FAILED|skipped)\b", out.stdout, re.M))
    assert rows == {**{r: "passed" for r in ROWS}, "eager vs CUDA graphs": "skipped"}, text
    assert out.returncode == 0
    line = {r: re.search(rf"^  {re.escape(r)}\s.*$", out.stdout, re.M).group(0) for r in rows}
    # each engine reported its engine core out of process; every update matched a fresh engine's answers
    for r in ROWS:
        assert "engine core out of process" in line[r], line[r]
        assert "answers equal a fresh" in line[r], line[r]
    # the TP 1 rows run the tied model: its export keeps the embedding tied and every sync loads it
    assert "export holds the embedding only" in line["colocated sleep/wake"]
    assert all("tied model" in line[r] for r in ("path", "object_store", "broadcast"))
    for r in ("colocated sleep/wake", "colocated TP 2, two ranks"):  # from the engines' and ranks' own reports
        assert "sleep: needs CUDA: not checked (the engine reports no sleep mode)" in line[r], line[r]
        assert "memory freed by the sleep: needs CUDA: not checked" in line[r], line[r]
        assert "wake order as planned" in line[r], line[r]
    assert "1 rank(s) stepped over gloo" in line["colocated sleep/wake"]
    assert "2 rank(s) stepped over gloo" in line["colocated TP 2, two ranks"]
    assert "trainer rank 0's process group: gloo" in line["broadcast"]
    assert "over tcp-store" in line["broadcast"]  # the transport trainer rank 0's end reports
    assert re.search(r"in \d+ bucket\(s\)", line["object_store"])  # 1 MiB buckets: the model travels in several
    assert re.search(r"\(threads \S+\|\S+\)", line["object_store + TP 2"])  # each TP worker on cores of its own
    assert "needs CUDA" in line["eager vs CUDA graphs"]
    assert not list(tmp_path.glob("smoke_*"))  # the tiny models are removed afterwards


def test_paths_the_cluster_cannot_take_are_skipped_with_the_reason():
    from east_ds.checks.smoke import PATHS, skip_reason

    assert {p: skip_reason(p, 1, on_gpu=True) for p in PATHS} == {
        "colocated sleep/wake": "", "path": "", "object_store": "",
        "broadcast": "needs 2 GPU(s); the cluster has 1",
        "colocated TP 2, two ranks": "needs 2 GPU(s); the cluster has 1",
        "object_store + TP 2": "needs 2 GPU(s); the cluster has 1",
        "eager vs CUDA graphs": ""}
    assert skip_reason("eager vs CUDA graphs", 8, on_gpu=False) == "needs CUDA (this node's GPUs are logical)"
    assert all(skip_reason(p, 0, on_gpu=False) for p in PATHS)  # no GPUs at all: nothing to smoke-test
    assert not any(skip_reason(p, 2, on_gpu=True) for p in PATHS)


def ev(*names):
    return [{"t": i, "actor": "engine 0", "event": n} for i, n in enumerate(names)]


def test_sleep_label_and_wake_order_come_from_the_engine_log():
    from east_ds.checks.smoke import check_wake_order, sleep_label

    log = ev("sleep level 2", "wake weights", "update_weights path", "wake kv_cache")
    assert sleep_label(log, sleep_mode=True) == "sleep level 2"  # the engine's words, not the driver's
    for words in ("sleep", "sleep skipped"):
        assert sleep_label(ev(words), sleep_mode=False) == (
            "sleep: needs CUDA: not checked (the engine reports no sleep mode)")
    with pytest.raises(AssertionError, match="no sleep"):
        sleep_label(ev("wake weights"), sleep_mode=True)
    check_wake_order(log)
    with pytest.raises(AssertionError, match="in that order"):  # KV cache woken before the new weights
        check_wake_order(ev("sleep", "wake weights", "wake kv_cache", "update_weights path"))
    with pytest.raises(AssertionError, match="in that order"):  # never slept
        check_wake_order(ev("wake weights", "update_weights path", "wake kv_cache"))


def test_sleep_must_free_a_stated_share_of_the_engines_gpu_memory():
    from east_ds.checks.smoke import SLEEP_FREES, check_sleep_memory

    gb = 1e9
    assert check_sleep_memory([{}], [{}], None) == "memory freed by the sleep: needs CUDA: not checked"
    before = [{"free": 40 * gb, "total": 80 * gb}, {"free": 41 * gb, "total": 80 * gb}]
    slept = [{"free": 78 * gb, "total": 80 * gb}, {"free": 79 * gb, "total": 80 * gb}]
    assert check_sleep_memory(before, slept, 0.5) == "sleep freed 38.0 GB per GPU (floor 20.0 GB)"
    assert SLEEP_FREES * 0.5 * 80 == 20
    stayed = [{"free": 40 * gb, "total": 80 * gb}, {"free": 79 * gb, "total": 80 * gb}]  # one worker kept its memory
    with pytest.raises(AssertionError, match="freed 0.00 GB on a GPU, below the floor of 20.00 GB"):
        check_sleep_memory(before, stayed, 0.5)


def test_broadcast_transport_is_what_the_participants_report():
    from east_ds.checks.smoke import broadcast_transport

    assert broadcast_transport({"kind": "nccl"}, ev("update_weights broadcast")) == "nccl"
    assert broadcast_transport({}, ev("update_weights broadcast tcp-store")) == "tcp-store"
    assert broadcast_transport({}, ev("update_weights broadcast")) == "a transport the actors did not report"
