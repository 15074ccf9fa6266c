"""Metrics sinks: JSONL lines, flattening for TensorBoard, rank-0-only logging."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from east_ds.metrics import (JsonlSink, MultiSink, NullSink, Sink, TensorBoardSink, flatten_scalars, make_sink,
                             tensorboard_available)
from east_ds.tables import read_jsonl


def test_jsonl_one_line_per_call(tmp_path):
    sink = JsonlSink(tmp_path / "sub" / "metrics.jsonl")
    sink.log({"iteration": 0, "eval_accuracy": 0.25, "phase_seconds": {"evaluate": 1.5}}, step=0)
    sink.log({"iteration": 1, "eval_accuracy": np.float32(0.5), "path": tmp_path}, step=1)
    sink.close()
    lines = (tmp_path / "sub" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first == {"step": 0, "iteration": 0, "eval_accuracy": 0.25, "phase_seconds": {"evaluate": 1.5}}
    assert second["eval_accuracy"] == 0.5 and second["path"] == str(tmp_path)


def test_jsonl_appends_and_reader_skips_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    JsonlSink(path).log({"iteration": 0}, step=0)
    with path.open("a") as f:
        f.write('{"iteration": 1, "eval_')  # a crash mid-line
    JsonlSink(path).log({"iteration": 2}, step=2)  # a resumed run appends
    assert [r["iteration"] for r in read_jsonl(path)] == [0, 2]


def test_flatten_scalars():
    m = {"eval_accuracy": 0.4, "phase_seconds": {"rollout": 12, "train": {"fwd": 1.0}}, "name": "east",
         "loss": "sft", "ok": True, "nan": float("nan"), "none": None, "list": [1, 2], "np": np.int64(3)}
    assert flatten_scalars(m) == {"eval_accuracy": 0.4, "phase_seconds/rollout": 12.0,
                                  "phase_seconds/train/fwd": 1.0, "ok": 1.0, "np": 3.0}


def test_make_sink_rank0_writes_other_ranks_do_not(tmp_path):
    s0 = make_sink(tmp_path / "r0", rank=0, tensorboard=False)
    s1 = make_sink(tmp_path / "r1", rank=1)
    assert isinstance(s1, NullSink)
    for s in (s0, s1):
        assert isinstance(s, Sink)  # runtime-checkable shape: has log and close
        s.log({"iteration": 3, "eval_accuracy": 0.5}, step=3)
        s.close()
    assert read_jsonl(tmp_path / "r0" / "metrics.jsonl")[0]["eval_accuracy"] == 0.5
    assert not (tmp_path / "r1").exists()


def test_multisink_fans_out(tmp_path):
    seen = []

    class Recorder:
        def log(self, metrics, step):
            seen.append((step, metrics["x"]))

        def close(self):
            seen.append("closed")

    s = MultiSink([Recorder(), JsonlSink(tmp_path / "m.jsonl")])
    s.log({"x": 1}, step=5)
    s.close()
    assert seen == [(5, 1), "closed"]
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 5, "x": 1}]


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


def test_make_sink_without_tensorboard(tmp_path):
    sink = make_sink(tmp_path, rank=0)
    kinds = {type(s).__name__ for s in sink.sinks}
    assert "JsonlSink" in kinds
    assert ("TensorBoardSink" in kinds) == tensorboard_available()
    sink.close()
