"""Metrics sinks: where the driver's per-phase metric dicts go. Only the driver logs, on rank 0.

    sink = make_sink(run_dir, rank)      # TensorBoard (if installed) on rank 0, a no-op elsewhere
    sink = make_sink(run_dir, 0, logging=cfg.logging, name=..., run_config=...)   # + W&B when logging.wandb
    sink.log({"iteration": k, "eval_accuracy": 0.41, "phase_seconds": {...}}, step=k)
    sink.close()

There is no JSONL sink: the run directory rebuilds `run_dir/metrics.jsonl`, the file `east-ds report` reads, from
the iterations' metrics.json (rundir.RunDir), so a resumed run never logs an iteration twice.
`TensorBoardSink` flattens nested dicts to `a/b` scalar tags and skips values that are not numbers; `WandbSink`
logs the same scalars to Weights & Biases, offline (files under run_dir/wandb, `wandb sync` later) when no
credentials are found, and resumes the same W&B run when the run directory is resumed.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class Sink(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discards everything (ranks other than 0, tests)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def flatten_scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1, "c": "x"}, "d": True} -> {"a/b": 1.0, "d": 1.0}: nested keys joined by '/', numbers only
    (bools count as 0/1; strings, lists, None and NaN/inf are skipped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_scalars(value, tag))
            continue
        try:
            if isinstance(value, (str, bytes)) or value is None:
                continue
            x = float(value)  # int, float, bool, numpy scalar, 0-d tensor
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[tag] = x
    return out


def tensorboard_available() -> bool:
    """True when a SummaryWriter can be imported (torch.utils.tensorboard needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:
        return False
    return True


class TensorBoardSink:
    """Scalars to TensorBoard event files in `log_dir`. Build it only when `tensorboard_available()`."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict, step: int) -> None:
        for tag, value in flatten_scalars(metrics).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_credentials() -> bool:
    """True when W&B finds an API key: WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbSink:
    """Scalars to a Weights & Biases run whose files live in run_dir/wandb. The W&B run id is kept in
    run_dir/wandb_id.txt, so a resumed run directory continues the same W&B run (its steps only grow)."""

    def __init__(self, run_dir: str | Path, name: str, run_config: dict | None = None, project: str = "east_ds",
                 entity: str = "", mode: str = "auto"):
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb_id.txt"
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8))
        if mode == "auto":  # an explicit WANDB_MODE in the environment wins, as W&B documents
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials() else "offline")
        self.run = wandb.init(project=project, entity=entity or None, name=name, dir=str(run_dir),
                              config=run_config or {}, id=id_file.read_text().strip(), resume="allow", mode=mode)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(flatten_scalars(metrics), step=step)

    def close(self) -> None:
        """Finish the run and stop W&B's service process: only then are the run's files complete on disk (an
        offline run's history was seen missing right after finish() alone)."""
        import wandb

        self.run.finish()
        wandb.teardown()


class MultiSink:
    """Fans each call out to several sinks, in order."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)

    def log(self, metrics: dict, step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def make_sink(run_dir: str | Path, rank: int = 0, tensorboard: bool | None = None,
              logging=None, name: str = "", run_config: dict | None = None) -> Sink:
    """Rank 0: TensorBoard at run_dir/tensorboard when it is installed (`tensorboard=None`) or asked for (`True`: an
    ImportError if it is not installed), plus W&B when `logging` (a config.LoggingConfig, whose `tensorboard`
    then replaces the argument) asks for it; `name` and `run_config` describe the W&B run. Other ranks:
    NullSink."""
    if rank != 0:
        return NullSink()
    run_dir = Path(run_dir)
    if logging is not None:
        tensorboard = logging.tensorboard
    sinks: list[Sink] = []
    if tensorboard or (tensorboard is None and tensorboard_available()):
        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if logging is not None and logging.wandb:
        sinks.append(WandbSink(run_dir, name or run_dir.name, run_config, logging.wandb_project,
                               logging.wandb_entity, logging.wandb_mode))
    return MultiSink(sinks)


class Phases:
    """Times named phases and keeps the metrics they return; a phase whose output was there already is recorded
    as skipped, not as 0 s. `store(name)`: where a phase's metrics are kept beside its output, so a resumed
    iteration reports the metrics of the phases it skipped."""

    def __init__(self, store: Callable[[str], Path] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []
        self.metrics: dict[str, dict] = {}
        self.store = store

    def run(self, name: str, done: Path | bool | None, fn: Callable[[], dict | None]) -> dict | None:
        """The one way the driver runs a phase. `done`: the phase's output (a Path: done when it exists and, with
        a store, its metrics were kept), True when there is nothing to do here (a loss without a reference, a
        split placement's sleep: passed over silently), None for a step that always runs. Otherwise `fn()` is
        timed and the dict it returns kept (and stored)."""
        from east_ds.tables import write_json

        kept = self.store(name) if self.store else None
        if done is True:
            return None
        if isinstance(done, Path) and done.exists() and (kept is None or kept.exists()):
            self.skip(name)
            if kept is not None:
                self.metrics[name] = json.loads(kept.read_text())
            return self.metrics.get(name)
        with self(name):
            out = fn()
        if out:
            self.metrics[name] = out
            if kept is not None:
                write_json(out, kept)
        return out

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        if name not in self.seconds:  # a phase timed in several parts is announced once
            print(f"[east-ds] phase {name} ...", flush=True)
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def skip(self, name: str) -> None:
        print(f"[east-ds] phase {name}: output present, skipped", flush=True)
        self.skipped.append(name)
