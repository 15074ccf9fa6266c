"""`east-ds compare CONFIG [key=value ...] --arms NAME=k=v[,k=v] ... [--seeds S] [--iterations K]`: several
weightings (or losses) as arms of one config, paired on one shared rollout per seed.

Each arm is the config plus its own `weighting.*` / `training.*` overrides (nothing else: an arm that changed the
model, the data or the rollout would no longer see the same samples, so such keys are refused, named). Each seed
sets `rollout.seed`, `weighting.seed` and `training.seed`. Every (arm, seed) is an ordinary run of the driver in

    <output_dir>/<name>_compare/<arm>_s<seed>/          (a run directory, resumable like `east-ds run`)
    <output_dir>/<name>_compare/compare.md, compare.json, accuracy.parquet   (the comparison report)

Pairing: per seed the first arm runs first; its iteration 0 evaluation (the starting model's accuracy) and its
iteration 1 rollout are then copied, with the metrics the driver keeps beside them (`iter_<k>/phases/`), into
every other arm's run directory before that arm runs. The driver skips a phase whose output and kept metrics
exist (metrics.Phases.run), so at iteration 1 the arms see the same samples, entropies and kept questions: only
the weights, the training and the later iterations differ. A killed compare resumes: the driver finds a finished
run finished (without starting anything) and resumes a half-done one; a copy is made only where missing.

The report: test accuracy per arm and iteration (mean over seeds), each arm's paired difference against the
first arm (mean over seeds with its Student-t 95% interval; fewer than 3 seeds draws a caveat), where each arm's
weight went (the diagnosis bands of `iter_<k>/diagnosis.parquet`), and the cost: rollouts, trainings and
evaluations run and shared, read back from the run directories (a shared table is byte-identical to the first
arm's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import pandas as pd

from east_ds.config import ConfigError, RunConfig, load_config
from east_ds.rundir import RunDir
from east_ds.tables import read_jsonl, read_table, write_json, write_table
from east_ds.weighting.paired import paired_differences, summarize

ARM_SECTIONS = ("weighting", "training")  # what an arm may change without breaking the pairing
SEED_KEYS = ("rollout.seed", "weighting.seed", "training.seed")  # set per seed by --seeds
FEW_SEEDS = 3  # fewer seeds than this: the interval is shown with a caveat (or not at all with one seed)
# (iteration, file) the first arm of a seed shares with the others: output first in the copy order is wrong, so
# the kept metrics come first (a phase counts as done only when both exist)
SHARED = ((0, "phases/evaluate.json"), (0, "eval.parquet"),
          (1, "phases/rollout.json"), (1, "rollout_stats.json"), (1, "rollouts.parquet"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CompareError(ValueError):
    """An arm or seed list that cannot be compared; the message names the arm and the key."""


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]  # key=value, each under ARM_SECTIONS


def parse_arm(text: str) -> Arm:
    """`NAME=k=v[,k=v]` (or a bare NAME: the config as it is). A comma starts a new override only when what
    follows holds a `=`, so list values such as `training.adam_betas=[0.9,0.99]` stay whole."""
    name, _, rest = text.partition("=")
    if not _NAME.match(name):
        raise CompareError(f"arm {text!r}: a name of letters, digits, '_', '-' or '.' must come first (NAME=k=v)")
    overrides: list[str] = []
    for piece in (rest.split(",") if rest else []):
        if "=" in piece or not overrides:
            overrides.append(piece)
        else:
            overrides[-1] += "," + piece
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise CompareError(f"arm {name!r}: {bad} is not of the form key=value")
    return Arm(name, tuple(o.strip() for o in overrides))


def parse_seeds(text: str | None) -> list[int] | None:
    """`0,1,2` -> [0, 1, 2]; None when not given (the config's own seeds, one run per arm)."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CompareError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def check_arms(arms: list[Arm], seeds: list[int] | None) -> None:
    """Refuse what would break the pairing: keys outside ARM_SECTIONS, seed keys when --seeds sets them, and
    repeated names. Every offending key is named with its arm."""
    if len(arms) < 2:
        raise CompareError(f"compare needs at least two arms, got {[a.name for a in arms]}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise CompareError(f"arm names must differ: {names}")
    for arm in arms:
        keys = [o.split("=", 1)[0] for o in arm.overrides]
        outside = [k for k in keys if k.split(".", 1)[0] not in ARM_SECTIONS or "." not in k]
        if outside:
            raise CompareError(
                f"arm {arm.name!r} changes {outside}: an arm may differ only in weighting.* or training.* keys "
                "(anything else changes the shared rollout or evaluation and breaks the pairing); put settings "
                "common to every arm on the command line before --arms")
        seeded = [k for k in keys if k in SEED_KEYS] if seeds is not None else []
        if seeded:
            raise CompareError(f"arm {arm.name!r} sets {seeded}, which --seeds sets for every arm")


def compare_dir(base: RunConfig) -> Path:
    return Path(base.output_dir) / f"{base.name}_compare"


def arm_configs(config: str | Path | None, overrides: list[str], arms: list[Arm], seeds: list[int] | None,
                iterations: int | None) -> tuple[RunConfig, dict[tuple[str, int], RunConfig]]:
    """(the base config, {(arm, seed): that run's config}). Unknown keys and values (an uncertainty value
    the mapping function does not know included) are ConfigErrors naming the arm and the key."""
    check_arms(arms, seeds)
    common = list(overrides) + ([f"iterations={iterations}"] if iterations is not None else [])
    base = load_config(config, common)
    out = compare_dir(base)
    runs: dict[tuple[str, int], RunConfig] = {}
    for arm in arms:
        for seed in (seeds if seeds is not None else [base.rollout.seed]):
            seeded = [f"{k}={seed}" for k in SEED_KEYS] if seeds is not None else []
            try:
                runs[arm.name, seed] = load_config(config, [*common, *seeded, *arm.overrides,
                                                            f"name={arm.name}_s{seed}", f"output_dir={out}"])
            except ConfigError as e:
                raise CompareError(f"arm {arm.name!r}: {e}") from None
    return base, runs


# ----------------------------------------------------------------------------------------------------------------
# Sharing the first arm's iteration 0 evaluation and iteration 1 rollout


def copy_shared(src_run: Path, dst_run: Path) -> list[str]:
    """Copy the SHARED files run directory `src_run` has into `dst_run` where missing (each atomically: a temp
    copy renamed into place), kept metrics before outputs. Returns the files copied, relative to the run."""
    copied = []
    for k, rel in SHARED:
        src, dst = Path(src_run) / f"iter_{k}" / rel, Path(dst_run) / f"iter_{k}" / rel
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".copy")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            copied.append(f"iter_{k}/{rel}")
    return copied


def run_paired(configs: list[RunConfig], run_one: Callable[[RunConfig, list[str]], None],
               source: Path | None = None) -> None:
    """Run the arms of one seed (`configs`, in order) paired on one rollout: before each arm, copy SHARED from
    `source` (a run directory; default the first arm's, which then runs first and samples) where that arm lacks
    it, then `run_one(config, files copied)`. A `source` from an earlier command (an arm run before, e.g. by a
    study that adds arms later) is shared with every arm here, the first included."""
    source = Path(source) if source is not None else Path(configs[0].run_dir)
    for cfg in configs:
        run_one(cfg, copy_shared(source, cfg.run_dir) if Path(cfg.run_dir) != source else [])


def run_compare(base: RunConfig, runs: dict[tuple[str, int], RunConfig], backends=None) -> dict:
    """Run (or resume) every (arm, seed): per seed the first arm, then the others on its shared tables; then
    write the report. Returns the report's figures. `backends`: the driver's (None: Ray, vLLM, DeepSpeed)."""
    from east_ds.driver import run

    arms = list(dict.fromkeys(a for a, _ in runs))
    seeds = list(dict.fromkeys(s for _, s in runs))
    t0 = time.perf_counter()

    def run_one(cfg: RunConfig, copied: list[str]) -> None:
        print(f"[compare] === {cfg.name}" + (f" (shared: {', '.join(copied)})" if copied else "") + " ===",
              flush=True)
        run(cfg, backends=backends)
    for seed in seeds:
        run_paired([runs[arm, seed] for arm in arms], run_one)
    return write_compare_report(compare_dir(base), runs, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# The report, from the run directories' own tables


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def accuracy_rows(runs: dict[tuple[str, int], RunConfig]) -> pd.DataFrame:
    """arm, seed, iteration, accuracy (from iter_<k>/eval.parquet: the mean of `correct`), n_test."""
    rows = []
    for (arm, seed), cfg in runs.items():
        for k in range(cfg.iterations + 1):
            ev = RunDir(cfg).iteration(k).eval
            if ev.is_file():
                correct = read_table(ev)["correct"].astype(bool)
                rows.append({"arm": arm, "seed": seed, "iteration": k, "accuracy": float(correct.mean()),
                             "n_test": int(len(correct))})
    return pd.DataFrame(rows, columns=["arm", "seed", "iteration", "accuracy", "n_test"])


def band_rows(runs: dict[tuple[str, int], RunConfig]) -> pd.DataFrame:
    """arm, seed, iteration, band, question_share, weight_share from iter_<k>/diagnosis.parquet."""
    frames = []
    for (arm, seed), cfg in runs.items():
        for k in range(1, cfg.iterations + 1):
            f = RunDir(cfg).iteration(k).diagnosis
            if f.is_file():
                t = read_table(f)[["band", "lo", "question_share", "weight_share"]]
                frames.append(t.assign(arm=arm, seed=seed, iteration=k))
    cols = ["arm", "seed", "iteration", "band", "lo", "question_share", "weight_share"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def cost(runs: dict[tuple[str, int], RunConfig]) -> dict:
    """What the compare ran and what it shared, read from the run directories: a table of another arm that is
    byte-identical to the first arm's of the same seed was shared, not run. One run of the config costs
    `iterations` rollouts and trainings and `iterations` + 1 evaluations."""
    arms = list(dict.fromkeys(a for a, _ in runs))
    out = {"runs": len(runs), "rollouts_run": 0, "rollouts_shared": 0, "trainings": 0, "evaluations_run": 0,
           "evaluations_shared": 0, "iteration_seconds": 0.0}
    for (arm, seed), cfg in runs.items():
        rd, first = RunDir(cfg), RunDir(runs[arms[0], seed])
        for k in range(cfg.iterations + 1):
            it = rd.iteration(k)
            for table, key in ((it.rollouts, "rollouts"), (it.eval, "evaluations")):
                if k == 0 and key == "rollouts" or not table.is_file():
                    continue
                shared = (arm != arms[0] and (k, table.name) in SHARED
                          and _digest(table) == _digest(first.iteration(k).path / table.name))
                out[f"{key}_{'shared' if shared else 'run'}"] += 1
            out["trainings"] += int(k > 0 and it.checkpoint.is_dir())
        out["iteration_seconds"] += sum(float(m.get("iteration_seconds", 0.0)) for m in
                                        (read_jsonl(rd.path / "metrics.jsonl") if (rd.path / "metrics.jsonl").is_file()
                                         else []))
    iterations = max(c.iterations for c in runs.values())
    out["one_run"] = {"rollouts": iterations, "trainings": iterations, "evaluations": iterations + 1}
    return out


def paired_rows(acc: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per (arm, iteration >= 1): seeds, mean paired difference against `reference` (points), t interval,
    seeds above."""
    diffs = paired_differences(acc[acc["iteration"] > 0], reference=reference)
    if diffs.empty:
        return pd.DataFrame(columns=["arm", "iteration", "seeds", "mean", "t_lo", "t_hi", "positive"])
    diffs["diff"] = 100 * diffs["diff"]
    s = summarize(diffs, ["arm", "iteration"], "diff")
    return s[["arm", "iteration", "seeds", "mean", "t_lo", "t_hi", "positive"]]


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _pts(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}"


def markdown(arms: list[str], seeds: list, acc: pd.DataFrame, paired: pd.DataFrame, bands: pd.DataFrame,
             spent: dict) -> str:
    """The report's text: accuracy, paired differences, where the weight went, cost."""
    iters = sorted(acc["iteration"].unique()) if len(acc) else []
    lines = [f"# Comparison of {len(arms)} arms over {len(seeds)} seed(s): {', '.join(arms)}", "",
             "## Test accuracy (%), mean over seeds", "",
             "| arm | " + " | ".join(f"iteration {k}" for k in iters) + " |", "|---" * (len(iters) + 1) + "|"]
    mean = acc.groupby(["arm", "iteration"])["accuracy"].mean() if len(acc) else pd.Series(dtype=float)
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(_pct(mean.get((arm, k), math.nan)) for k in iters) + " |")
    lines += ["", f"## Paired difference against {arms[0]} (points)", "",
              f"Arm minus {arms[0]} on the same seed (same iteration 1 rollout, same test set); mean over seeds with "
              "the Student-t 95% interval.", ""]
    if len(seeds) < FEW_SEEDS:
        lines += [f"Caveat: {len(seeds)} seed(s). " + ("One seed gives no interval at all; " if len(seeds) < 2
                  else "An interval from 2 seeds rests on one degree of freedom and is very wide; ")
                  + f"use at least {FEW_SEEDS} seeds before reading a difference as real.", ""]
    lines += ["| arm | iteration | seeds | difference | t 95% interval | seeds above |", "|---|---|---|---|---|---|"]
    for r in paired.itertuples():
        lines.append(f"| {r.arm} | {r.iteration} | {r.seeds} | {_pts(r.mean)} | [{_pts(r.t_lo)}, {_pts(r.t_hi)}] "
                     f"| {r.positive} of {r.seeds} |")
    lines += ["", "## Where the weight went (per band of correct samples, %, mean over seeds)", "",
              "Each cell: the share of the arm's weight on the band (in brackets: the share of its kept questions "
              "there, which is where vanilla's weight goes). At iteration 1 every arm has the same questions "
              "(the shared rollout).", ""]
    lines += _band_lines(arms, bands)
    one = spent["one_run"]
    lines += ["", "## Cost", "",
              f"{spent['runs']} runs: {spent['rollouts_run']} rollouts run and {spent['rollouts_shared']} shared, "
              f"{spent['trainings']} trainings, {spent['evaluations_run']} evaluations run and "
              f"{spent['evaluations_shared']} shared; one run of the config costs {one['rollouts']} rollout(s), "
              f"{one['trainings']} training(s) and {one['evaluations']} evaluation(s). Iterations took "
              f"{spent['iteration_seconds']:.0f} s in all" + ("" if math.isnan(spent["seconds"]) else
                                                                f"; this command {spent['seconds']:.0f} s") + ".", ""]
    return "\n".join(lines)


def _band_lines(arms: list[str], bands: pd.DataFrame) -> list[str]:
    if bands.empty:
        return ["(no diagnosis tables yet)"]
    labels = list(dict.fromkeys(bands.sort_values("lo")["band"]))
    out = ["| arm | iteration | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    mean = bands.groupby(["arm", "iteration", "band"])[["weight_share", "question_share"]].mean()
    for k in sorted(bands["iteration"].unique()):
        for arm in arms:
            cells = [f"{_pct(mean.loc[(arm, k, b), 'weight_share'])} ({_pct(mean.loc[(arm, k, b), 'question_share'])})"
                     if (arm, k, b) in mean.index else "-" for b in labels]
            if any(c != "-" for c in cells):
                out.append(f"| {arm} | {k} | " + " | ".join(cells) + " |")
    return out


def write_compare_report(out: Path, runs: dict[tuple[str, int], RunConfig], seconds: float = math.nan) -> dict:
    """compare.md, compare.json (the figures) and accuracy.parquet (per arm, seed, iteration) in folder `out`
    (a compare's: compare_dir), from the runs' own tables; the first arm of `runs` is the reference. Returns the
    figures."""
    arms = list(dict.fromkeys(a for a, _ in runs))
    seeds = list(dict.fromkeys(s for _, s in runs))
    acc, bands, spent = accuracy_rows(runs), band_rows(runs), {**cost(runs), "seconds": seconds}
    paired = paired_rows(acc, arms[0])
    out = Path(out)
    write_table(acc, out / "accuracy.parquet")
    text = markdown(arms, seeds, acc, paired, bands, spent)
    (out / "compare.md").write_text(text)

    def records(df: pd.DataFrame) -> list[dict]:
        return json.loads(df.to_json(orient="records"))
    figures = {"arms": arms, "seeds": seeds, "reference": arms[0], "accuracy": records(acc),
               "paired": records(paired), "bands": records(bands), "cost": spent,
               "runs": {f"{a}_s{s}": str(c.run_dir) for (a, s), c in runs.items()}}
    write_json(figures, out / "compare.json")
    return {**figures, "markdown": text}


# ----------------------------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="several weightings as arms of one config, paired on a shared rollout",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides common to every arm")
    p.add_argument("--arms", nargs="+", required=True, metavar="NAME=k=v[,k=v]",
                   help="two or more arms; the first is the reference of the paired differences, e.g. "
                        "vanilla=weighting.a=0 east=weighting.a=1 learn=weighting.value=learnability")
    p.add_argument("--seeds", help="comma-separated seeds (rollout.seed, weighting.seed, training.seed); "
                                   "default: the config's, one run per arm")
    p.add_argument("--iterations", type=int, help="iterations per run (default: the config's)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from east_ds.driver import HANDLED

    try:
        arms = [parse_arm(a) for a in args.arms]
        base, runs = arm_configs(args.config, args.overrides, arms, parse_seeds(args.seeds), args.iterations)
        figures = run_compare(base, runs)
    except (CompareError, *HANDLED) as e:
        print(f"east-ds compare: error: {e}", file=sys.stderr)
        return 2
    print(figures["markdown"])
    print(f"report: {compare_dir(base) / 'compare.md'}")
    return 0
