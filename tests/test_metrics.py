"""Metrics sinks: JSONL lines, flattening for TensorBoard, rank-0-only logging."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from east_ds.metrics import (MultiSink, NullSink, Sink, TensorBoardSink, flatten_scalars, make_sink,
                             tensorboard_available)


def test_flatten_scalars():
    m = {"eval_accuracy": 0.4, "phase_seconds": {"rollout": 12, "train": {"fwd": 1.0}}, "name": "east",
         "loss": "sft", "ok": True, "nan": float("nan"), "none": None, "list": [1, 2], "np": np.int64(3)}
    assert flatten_scalars(m) == {"eval_accuracy": 0.4, "phase_seconds/rollout": 12.0,
                                  "phase_seconds/train/fwd": 1.0, "ok": 1.0, "np": 3.0}


def test_make_sink_rank0_logs_other_ranks_do_not(tmp_path):
    """Rank 0 gets the configured sinks (here TensorBoard when installed), every other rank a NullSink that
    writes nothing."""
    s0 = make_sink(tmp_path / "r0", rank=0, tensorboard=tensorboard_available() or False)
    s1 = make_sink(tmp_path / "r1", rank=1, tensorboard=True)
    assert isinstance(s1, NullSink) and not isinstance(s0, NullSink)
    for s in (s0, s1):
        assert isinstance(s, Sink)  # runtime-checkable shape: has log and close
        s.log({"iteration": 3, "eval_accuracy": 0.5}, step=3)
        s.close()
    assert not (tmp_path / "r1").exists()
    assert (tmp_path / "r0" / "tensorboard").is_dir() == tensorboard_available()


def test_multisink_fans_out(tmp_path):
    seen = []

    class Recorder:
        def log(self, metrics, step):
            seen.append((step, metrics["x"]))

        def close(self):
            seen.append("closed")

    s = MultiSink([Recorder(), Recorder()])
    s.log({"x": 1}, step=5)
    s.close()
    assert seen == [(5, 1), (5, 1), "closed", "closed"]


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_sink_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = TensorBoardSink(tmp_path / "tb")
    s.log({"eval_accuracy": 0.25, "phase_seconds": {"train": 3.0}, "name": "east"}, step=1)
    s.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert sorted(tags) == ["eval_accuracy", "phase_seconds/train"]
    assert math.isclose(acc.Scalars("phase_seconds/train")[0].value, 3.0)


def test_make_sink_takes_tensorboard_when_installed(tmp_path):
    sink = make_sink(tmp_path, rank=0)
    kinds = {type(s).__name__ for s in sink.sinks}
    assert ("TensorBoardSink" in kinds) == tensorboard_available()
    sink.close()


def _wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file: a log of 32 KiB blocks after a 7-byte header, each record
    framed by (crc32, length, type) with type 1 = whole, 2/3/4 = first/middle/last part; payloads are protobuf
    Records (wandb.proto)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part, rows = run_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_sink_offline_holds_the_logged_metrics(tmp_path, monkeypatch):
    """No credentials here: mode "auto" runs W&B offline, and the offline run's file holds every logged scalar
    at its step. A second sink on the same run directory (a resumed run) continues the same W&B run id."""
    pytest.importorskip("wandb")
    from east_ds.config import LoggingConfig

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggingConfig(tensorboard=False, wandb=True, wandb_project="east-test")
    sink = make_sink(tmp_path / "run", rank=0, logging=cfg, name="east",
                     run_config={"weighting": {"a": 1.0}})
    sink.log({"iteration": 0, "eval_accuracy": 0.25, "phase_seconds": {"evaluate": 1.5}, "name": "east"}, step=0)
    sink.log({"iteration": 1, "eval_accuracy": 0.5, "phase_seconds": {"train": 3.0}}, step=1)
    sink.close()
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    [offline] = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    rows = [{k: v for k, v in r.items() if not k.startswith("_") or k == "_step"}
            for r in _wandb_history(offline / f"run-{run_id}.wandb")]
    assert rows == [{"_step": 0, "iteration": 0, "eval_accuracy": 0.25, "phase_seconds/evaluate": 1.5},
                    {"_step": 1, "iteration": 1, "eval_accuracy": 0.5, "phase_seconds/train": 3.0}]
    # the resumed run directory logs into the same W&B run id
    sink = make_sink(tmp_path / "run", rank=0, logging=cfg, name="east")
    sink.log({"iteration": 2, "eval_accuracy": 0.75}, step=2)
    sink.close()
    later = (tmp_path / "run" / "wandb" / "latest-run").resolve()
    assert later.name.endswith(run_id)
    assert [r["eval_accuracy"] for r in _wandb_history(later / f"run-{run_id}.wandb")] == [0.75]
