"""The driver's own logic on stand-ins (tests/driver_fakes.py): metrics, skip, divergence, and resume after a
real SIGKILL at every phase boundary and inside every phase, in seconds.

The kill matrix: a forked child runs `driver.run` and SIGKILLs itself at one point (after a phase, or at the
midpoint of a phase: its first table write or stand-in call); the test reruns the same command and requires
the run's tables, checkpoints and metrics to equal an uninterrupted run's, every iteration logged once, and no
phase that had finished before the kill run again. The same paths with the real components: test_driver.py
(resume after SIGKILL during training) and test_placement.py (colocated sleep, wake and DPO reference)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
import signal
from pathlib import Path

import pytest
import yaml

import driver_fakes as fakes
from east_ds import driver
from east_ds.config import load_config
from east_ds.metrics import Phases

ROOT = Path(__file__).resolve().parent.parent
ITERATION = ["rollout", "weigh", "diagnosis", "sleep engines", "start trainer", "reference", "train",
             "wake weights", "update_weights", "wake kv_cache", "evaluate"]  # driver.run_iteration's order
RESUME_ACCOUNTING = ("skipped_phases", "actor_events", "shards_generated", "shards_reused", "generated_shard_ids")
WITH_OUTPUT = ("rollout", "weigh", "reference", "train", "evaluate")  # skipped on a rerun once done


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("driver_logic")
    model, golds = fakes.tiny_task(root, train_seed=11, test_seed=12)
    return root, model, golds


def config(root: Path, model: Path, name: str, loss: str = "sft", mode: str = "split", **top):
    cfg = {"name": name, "output_dir": str(root / "runs"), "iterations": 2,
           "model": {"path": str(model), "dtype": "float32"},
           "data": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl"), "format": "gsm8k"},
           "rollout": {"n": 4, "max_new_tokens": 16, "max_model_len": 256, "num_engines": 1, "shard_size": 4},
           "weighting": {"a": 1.0}, "placement": {"mode": mode},
           "training": {"loss": loss, "global_batch_size": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
                        "max_len": 256, "deepspeed_config": str(ROOT / "ds_configs" / "zero2.json")},
           "evaluation": {"max_new_tokens": 16}, **top}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, [])


def backends(golds, **kw):
    """Colocated runs pretend one GPU (the placement then sleeps and wakes the stand-in engines)."""
    b = fakes.FakeBackends(golds, **kw)
    b.connect = lambda cfg, run_dir: (driver.Placement.of(cfg, 1 if cfg.placement.mode == "colocated" else 0), True)
    return b


def comparable(metrics: list[dict]) -> list[dict]:
    """The metrics a resumed run must reproduce: all but timings and what describes the resume itself (skip
    lists, shards reused, actor event times)."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if "seconds" not in k and k not in RESUME_ACCOUNTING}
        return [clean(v) for v in x] if isinstance(x, list) else x
    return [clean(m) for m in metrics]


# ----------------------------------------------------------------------------------------------------------------


def test_a_run_records_every_phase_and_every_file_has_a_path(setup, capsys):
    """Two iterations: each phase's metrics in the iteration's metrics, the accuracy of iterations 0-2, every file
    the run wrote inside an iteration named by IterDir, and a rerun that finds nothing to do."""
    root, model, golds = setup
    cfg = config(root, model, "plain")
    log = driver.run(cfg, backends=backends(golds))
    assert [m["iteration"] for m in log] == [0, 1, 2]
    assert all(0.0 <= m["eval_accuracy"] <= 1.0 for m in log)
    for m in log[1:]:
        assert {"rollout", "weigh", "diagnosis", "train", "update_weights", "evaluate"} <= set(m)
        assert m["rollout"]["rows"] == 12 * 4 and m["evaluate"]["n"] == 6
        assert set(m["phase_seconds"]) == {"rollout", "weigh", "diagnosis", "start trainer", "train",
                                           "update_weights", "evaluate"}  # split placement: nothing sleeps
    rd = driver.RunDir(cfg)
    named = {p.name for k in range(3) for p in _paths(rd.iteration(k))}
    for f in cfg.run_dir.glob("iter_*/*"):
        assert f.name in named, f"{f} has no path in IterDir"
    assert driver.run(cfg, backends=backends(golds)) == log
    assert "every iteration finished earlier; nothing to do" in capsys.readouterr().out


def _paths(it) -> list[Path]:
    props = [getattr(it, n) for n in dir(type(it)) if isinstance(getattr(type(it), n), property)]
    return [p for p in props if isinstance(p, Path)] + [it.phase_metrics("x").parent]


def test_a_diverged_step_publishes_nothing_and_a_rerun_resumes(setup):
    """Training that diverges stops the run before anything is published: no checkpoint, no iteration metrics,
    no weight update of the engines; the rerun (the user changed something) trains and finishes."""
    root, model, golds = setup
    from east_ds.training.divergence import TrainingDiverged

    cfg = config(root, model, "diverged")
    fakes.CALLS.clear()
    with pytest.raises(TrainingDiverged, match="iteration 1, step 1"):
        driver.run(cfg, backends=backends(golds, diverge=True))
    it = driver.RunDir(cfg).iteration(1)
    assert it.examples.is_file() and not it.checkpoint.exists() and not it.metrics.exists()
    assert [c for c, _ in fakes.CALLS if c == "update"] == []
    log = driver.run(cfg, backends=backends(golds))
    assert [m["iteration"] for m in log] == [0, 1, 2]
    assert log[1]["skipped_phases"] == ["rollout", "weigh"]


@pytest.mark.gpu_plan
def test_colocated_engines_sleep_and_wake_in_the_planned_order(setup):
    """The loop's visible steps around training follow device_plan.sleep_plan's wake order (vLLM's level-2 sleep,
    then weights woken, loaded, and only then the KV cache: see test_gpu_plan.py::test_sleep_level_and_wake_order
    for the upstream lines): per iteration, the engines' events are sleep, wake weights, the update, wake
    kv_cache."""
    from east_ds.cluster import device_plan

    root, model, golds = setup
    cfg = config(root, model, "wake_order", mode="colocated")
    log = driver.run(cfg, backends=backends(golds))
    steps = {"sleep": "sleep", "wake weights": "wake weights", "update_weights path": "update weights",
             "wake kv_cache": "wake kv_cache"}
    for m in log[1:]:
        seen = [steps[e["event"]] for e in m["actor_events"]]
        assert seen == ["sleep"] + list(device_plan.sleep_plan().wake_order[1:])


# ----------------------------------------------------------------------------------------------------------------
# Kill at every point


def _killing_run(cfg, golds, k: int, phase: str, where: str) -> None:
    """In the child: run the driver and SIGKILL this process `where` ("inside" / "after") phase `phase` of
    iteration k. Inside: at the phase's first table write or stand-in midpoint."""
    import east_ds.rollout.stage as rollout_stage
    import east_ds.weighting.stage as weighting_stage

    run = Phases.run

    def patched(self, name, done, fn):
        here = self.store is not None and self.store(name).parent.parent.name == f"iter_{k}" and name == phase
        if here and where == "inside":
            fakes.DIE_INSIDE["armed"] = True
        out = run(self, name, done, fn)
        if here:
            fakes.maybe_die() if where == "inside" else fakes.os.kill(fakes.os.getpid(), signal.SIGKILL)
        return out

    for module in (driver, rollout_stage, weighting_stage):
        write = module.write_table

        def dying_write(*a, _write=write, **kw):
            out = _write(*a, **kw)
            fakes.maybe_die()
            return out
        module.write_table = dying_write
    Phases.run = patched
    driver.run(cfg, backends=backends(golds))


POINTS = ([(0, "evaluate", "inside")]  # "after" iteration 0 is "before" iteration 1's rollout
          + [(1, p, w) for p in ITERATION for w in ("inside", "after")]
          + [(2, "train", "inside"), (2, "evaluate", "after")])


@pytest.fixture(scope="module")
def uninterrupted(setup):
    root, model, golds = setup
    cfg = config(root, model, "whole", loss="dpo", mode="colocated")
    log = driver.run(cfg, backends=backends(golds))
    return fakes.table_digests(cfg.run_dir), comparable(log)


@pytest.fixture
def no_preflight(monkeypatch):
    """The matrix reruns one configuration dozens of times: the preflight checks (model, data, memory), which
    test_preflight.py covers, run once, in `uninterrupted`, not in every kill and rerun."""
    from east_ds.checks import preflight

    monkeypatch.setattr(preflight, "check_before_run", lambda cfg: None)


@pytest.mark.parametrize("k, phase, where", POINTS, ids=[f"iter{k}-{w}-{p.replace(' ', '_')}" for k, p, w in POINTS])
def test_killed_anywhere_the_rerun_equals_an_uninterrupted_run(setup, uninterrupted, no_preflight, k, phase,
                                                               where):
    """Colocated DPO (every phase of the loop does work), killed at one point and rerun; a kill in iteration 0
    or 1 runs one iteration (a prefix of the uninterrupted two-iteration run)."""
    root, model, golds = setup
    cfg = config(root, model, "whole", loss="dpo", mode="colocated")
    cfg = dataclasses.replace(cfg, output_dir=str(root / f"killed-{k}-{where}-{phase.replace(' ', '_')}"),
                              iterations=max(k, 1))
    child = multiprocessing.get_context("fork").Process(target=_killing_run, args=(cfg, golds, k, phase, where))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL, f"the child was not killed at {phase} ({where}): {child.exitcode}"
    log = driver.run(cfg, backends=backends(golds))
    tables, metrics = uninterrupted
    upto = [f"iter_{j}/" for j in range(cfg.iterations + 1)]
    assert fakes.table_digests(cfg.run_dir) == {f: d for f, d in tables.items() if f.startswith(tuple(upto))}
    assert comparable(log) == metrics[:cfg.iterations + 1]
    assert [json.loads(x)["iteration"] for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()] == list(
        range(cfg.iterations + 1))
    order = ["evaluate"] if k == 0 else ITERATION
    finished = [p for p in order[:order.index(phase) + (where == "after")] if p in WITH_OUTPUT]
    assert set(finished) <= set(log[k]["skipped_phases"]), (finished, log[k]["skipped_phases"])
    shutil.rmtree(cfg.run_dir)
