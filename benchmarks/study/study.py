"""A seeded, paired study of EAST against vanilla self-training and the paper's baseline weightings, on the CPU.

    python benchmarks/study/study.py                 # the full study (benchmarks/STUDY.md): 5 seeds x 6 arms x 3 iterations
    python benchmarks/study/study.py --quick         # 2 seeds x 2 arms (vanilla, east_a1) x 2 iterations, smaller sets
    python benchmarks/study/study.py --analyze-only  # tables, plots and STUDY.md's results from what is recorded
    python benchmarks/study/study.py --arms dpo_vanilla dpo_east_a1   # add the DPO arms to a study (paired as well)

Each seed builds its own tiny model (east_ds.data.tiny) and warm-starts it (east_ds.demo.warm_start) on a task of
mixed difficulty (east_ds.data.synthetic.make_mixed_problems); every arm of that seed starts from that same model and
runs `east_ds.driver.run` with the demo's config, differing only in the weighting (or the loss). The arms are
`east-ds compare` arms (east_ds.compare: weighting.* and training.* overrides only), and each seed runs through
compare's pairing (compare.run_paired): the arms of a seed share iteration 1's rollouts and iteration 0's
evaluation (copied into each run directory, where the driver skips those phases), so at iteration 1 the only
difference between arms is the weight. Seeds run one after another, all arms of a seed together, so a study cut
short leaves complete paired seeds. After running, compare's report of the command's runs (paired differences,
where the weight went, rollouts run and shared) is written to <results>/compare/.

Resumable: every finished (arm, seed, iteration) appends one row to <results>/results.jsonl (and that run's
per-question tables to <results>/questions/ and <results>/eval/); rerunning the same command skips recorded
runs, and the driver resumes a half-done run from its run directory under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python benchmarks/study/study.py` from anywhere
    sys.path.insert(0, str(REPO))

# arm -> (weighting.value, weighting.a, training.loss, extra overrides)
ARMS: dict[str, tuple[str, float, str, tuple[str, ...]]] = {
    "vanilla": ("entropy", 0.0, "sft", ()),
    "east_a1": ("entropy", 1.0, "sft", ()),
    "east_a2": ("entropy", 2.0, "sft", ()),
    "east_a-1": ("entropy", -1.0, "sft", ()),
    "accuracy": ("accuracy", 1.0, "sft", ()),
    "rejected": ("rejected", 1.0, "sft", ()),
    "dpo_vanilla": ("entropy", 0.0, "dpo", ("training.lr=3.0e-5",)),
    "dpo_east_a1": ("entropy", 1.0, "dpo", ("training.lr=3.0e-5",)),
    # tests the diagnosis: EAST's weights, but a question with <= 2 of 16 correct never rises above weight 1
    "east_a1_cap2": ("entropy", 1.0, "sft", ("weighting.cap_at_most_correct=2",)),
    # learnability p(1 - p) (p = share of correct samples): weight to questions solved about half the time
    "learn_a1": ("learnability", 1.0, "sft", ()),
}
FULL_ARMS = ("vanilla", "east_a1", "east_a2", "east_a-1", "accuracy", "rejected")


@dataclass(frozen=True)
class StudyConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # one warm-started model per seed, shared by all its arms
    arms: tuple[str, ...] = FULL_ARMS  # names from ARMS; the first is the reference of the paired differences
    iterations: int = 3  # EAST iterations per run (iteration 0 is the warm start)
    train_questions: int = 400  # training questions per seed (drawn per seed)
    test_questions: int = 1000  # one fixed test set for every seed and arm
    n: int = 16  # samples per training question
    warm_steps: int = 600  # most warm-start optimizer steps (stops earlier once samples disagree enough)
    warm_check_every: int = 50  # warm-start steps between checks of sampled disagreement
    warm_questions: int = 3000  # worked solutions the warm start trains on
    overrides: tuple[str, ...] = ()  # extra key=value overrides for every run (tests use tiny settings)
    start_model: str = ""  # a warm-started model for every seed instead of one built per seed (tests only)
    out: Path = REPO / "runs" / "study"  # models, data and run directories (large; not committed)
    results: Path = REPO / "benchmarks" / "study"  # results.jsonl, per-question tables, plots, tables


QUICK = dict(seeds=(0, 1), arms=("vanilla", "east_a1"), iterations=2, train_questions=200, test_questions=500,
             warm_steps=300)


# ---------------------------------------------------------------------------------------------------------------
# one seed: data and warm start


def seed_paths(cfg: StudyConfig, seed: int) -> tuple[Path, Path, Path]:
    """Where the seed's training set, the shared test set and the seed's warm-started model live."""
    root = cfg.out / f"seed_{seed}"
    return (root / "data" / "train.jsonl", cfg.out / "test.jsonl",
            Path(cfg.start_model) if cfg.start_model else root / "warm_start")


def prepare_seed(cfg: StudyConfig, seed: int) -> tuple[Path, Path, Path]:
    """The seed's training set, the shared test set and the seed's warm-started model (built once, reused)."""
    import pandas as pd

    from east_ds.demo import warm_start
    from east_ds.data.synthetic import make_mixed_problems, to_gsm8k_rows
    from east_ds.tables import write_table
    from east_ds.data.tiny import build_tiny_model

    root = cfg.out / f"seed_{seed}"
    train, test, start = seed_paths(cfg, seed)
    if not test.is_file():
        write_table(pd.DataFrame(to_gsm8k_rows(make_mixed_problems(cfg.test_questions, seed=2, prefix="test"))),
                    test)
    if not train.is_file():
        problems = make_mixed_problems(cfg.train_questions, seed=1000 * seed + 1, prefix="train")
        write_table(pd.DataFrame(to_gsm8k_rows(problems)), train)
    if cfg.start_model:
        return train, test, start
    if not (start / "warm_start.json").is_file():
        base = build_tiny_model(root / "base_model", size="tiny", seed=seed)
        warm = make_mixed_problems(cfg.warm_questions, seed=1000 * seed + 3, prefix="warm")
        probe = make_mixed_problems(32, seed=1000 * seed + 4, prefix="probe")
        warm_start(base, start, warm, probe, max_steps=cfg.warm_steps, check_every=cfg.warm_check_every, seed=seed)
    return train, test, start


def study_arm(name: str):
    """ARMS[name] as an `east-ds compare` arm (east_ds.compare.Arm): its weighting and training overrides."""
    from east_ds.compare import Arm

    value, a, loss, extra = ARMS[name]
    return Arm(name, (f"weighting.value={value}", f"weighting.a={a}", f"training.loss={loss}", *extra))


def run_config(cfg: StudyConfig, seed: int, arm: str):
    """The demo's config for one (seed, arm) run: the arm's overrides and the seed's rollout and weighting seeds
    (training.seed stays the config's, as in the recorded runs), then the study's common overrides."""
    from east_ds.demo import demo_config

    train, test, start = seed_paths(cfg, seed)
    return demo_config(cfg.out / f"seed_{seed}", arm, ARMS[arm][1], start, train, test, cfg.iterations, (
        *study_arm(arm).overrides, f"rollout.seed={seed}", f"weighting.seed={seed}", *cfg.overrides))


def shared_source(cfg: StudyConfig, seed: int) -> Path | None:
    """The run directory of an arm of the seed that already sampled iteration 1, also one run by an earlier
    command with other --arms (same start model, same rollout config and seed: the loss and the weighting act
    later), or None: then the seed's first arm samples and the others share its tables (compare.run_paired)."""
    for arm in ARMS:
        run_dir = cfg.out / f"seed_{seed}" / arm
        if (run_dir / "iter_1" / "rollouts.parquet").is_file():
            return run_dir
    return None


# ---------------------------------------------------------------------------------------------------------------
# recording: one row per (arm, seed, iteration), per-question tables per run


def recorded(results: Path) -> set[tuple[str, int, int]]:
    """(arm, seed, iteration) keys already in results.jsonl."""
    from east_ds.tables import read_jsonl

    path = results / "results.jsonl"
    return {(r["arm"], int(r["seed"]), int(r["iteration"])) for r in read_jsonl(path)} if path.is_file() else set()


def result_row(arm: str, seed: int, m: dict, n_test: int) -> dict:
    """The results.jsonl row of one finished iteration, from the driver's metrics record."""
    w = m.get("weigh", {})
    row = {"arm": arm, "seed": seed, "iteration": int(m["iteration"]), "accuracy": m.get("eval_accuracy"),
           "n_test": n_test, "a": m.get("a"), "value": m.get("value"), "loss": m.get("loss")}
    for key in ("questions", "kept", "dropped_all_correct", "dropped_all_wrong", "train_accuracy",
                "mean_entropy_kept", "weight_min", "weight_max"):
        if key in w:
            row[key] = w[key]
    if "iteration_seconds" in m:
        row["seconds"] = round(float(m["iteration_seconds"]), 2)
    return row


def collect(cfg: StudyConfig, seed: int, arm: str) -> int:
    """Append rows for this run's finished iterations that results.jsonl lacks, and rewrite the run's
    per-question tables. Returns the number of rows appended."""
    import pandas as pd

    from east_ds.tables import read_jsonl, read_table, write_table

    run_dir = cfg.out / f"seed_{seed}" / arm
    log = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    have = recorded(cfg.results)
    questions, evals, new = [], [], []
    for m in log:
        k = int(m["iteration"])
        it = run_dir / f"iter_{k}"
        ev = read_table(it / "eval.parquet")[["question_id", "correct"]].assign(iteration=k)
        evals.append(ev)
        if (it / "questions.parquet").is_file():
            q = read_table(it / "questions.parquet")
            questions.append(q[["question_id", "n", "n_correct", "entropy", "accuracy", "rejected", "kept",
                                "weight"]].assign(iteration=k))
        if (arm, seed, k) not in have:
            new.append(result_row(arm, seed, m, len(ev)))
    if evals:
        write_table(pd.concat(evals, ignore_index=True), cfg.results / "eval" / f"seed{seed}_{arm}.parquet")
    if questions:
        write_table(pd.concat(questions, ignore_index=True),
                    cfg.results / "questions" / f"seed{seed}_{arm}.parquet")
    if new:
        cfg.results.mkdir(parents=True, exist_ok=True)
        with open(cfg.results / "results.jsonl", "a") as f:
            for row in new:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    return len(new)


class RecordingSink:
    """A driver metrics sink that records each iteration in results.jsonl as soon as it finishes."""

    def __init__(self, cfg: StudyConfig, seed: int, arm: str) -> None:
        self.cfg, self.seed, self.arm = cfg, seed, arm

    def log(self, metrics: dict, step: int) -> None:
        collect(self.cfg, self.seed, self.arm)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# the study


def run_study(cfg: StudyConfig) -> int:
    """Run (or resume) every (seed, arm) not fully recorded, seed by seed, each seed's arms paired through
    east_ds.compare.run_paired. Returns the number of failed runs."""
    from east_ds.compare import check_arms, run_paired

    for arm in cfg.arms:
        if arm not in ARMS:
            raise SystemExit(f"study: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    check_arms([study_arm(a) for a in ARMS], None)  # every arm differs only where compare allows
    t_study = time.perf_counter()
    failed = []
    for seed in cfg.seeds:
        todo = [arm for arm in cfg.arms
                if not all((arm, seed, k) in recorded(cfg.results) for k in range(cfg.iterations + 1))]
        if not todo:
            print(f"[study] seed {seed}: every arm recorded earlier", flush=True)
            continue
        t0 = time.perf_counter()
        prepare_seed(cfg, seed)
        print(f"[study] seed {seed}: data and warm start ready ({time.perf_counter() - t0:.0f} s)", flush=True)

        def run_one(run_cfg, copied: list[str], seed=seed) -> None:  # the run's name is its arm's
            failed.extend(run_arm(cfg, seed, run_cfg.name, run_cfg, copied, t_study))
        run_paired([run_config(cfg, seed, arm) for arm in todo], run_one, source=shared_source(cfg, seed))
    return len(failed)


def run_arm(cfg: StudyConfig, seed: int, arm: str, run_cfg, copied: list[str], t_study: float) -> list[str]:
    """One (seed, arm) run, recorded as it goes; a crashed run resumes from its run directory once. Returns
    [arm] if both attempts failed, else []."""
    from east_ds.driver import run

    print(f"[study] === seed {seed}, arm {arm}" + (" (iteration 1 rollouts shared)"
                                                   if "iter_1/rollouts.parquet" in copied else "") + " ===",
          flush=True)
    t0 = time.perf_counter()
    failed = [arm]
    for attempt in (1, 2):
        try:
            run(run_cfg, sink=RecordingSink(cfg, seed, arm))
            failed = []
            break
        except Exception:  # noqa: BLE001 - keep the study going; the failure is logged and counted
            traceback.print_exc()
            print(f"[study] seed {seed}, arm {arm}: attempt {attempt} failed", flush=True)
    collect(cfg, seed, arm)
    print(f"[study] seed {seed}, arm {arm}: {time.perf_counter() - t0:.0f} s "
          f"(study so far {time.perf_counter() - t_study:.0f} s)", flush=True)
    return failed


def compare_report(cfg: StudyConfig) -> Path | None:
    """`east-ds compare`'s report (east_ds.compare.write_compare_report) over this command's (arm, seed) runs
    that have run directories, in <results>/compare/: accuracy, paired differences against the reference arm
    (vanilla when among the arms), where each arm's weight went, rollouts run and shared. None if no run."""
    from east_ds.compare import write_compare_report

    arms = sorted(cfg.arms, key=lambda a: a != "vanilla")  # vanilla first: the reference
    runs = {(arm, seed): run_config(cfg, seed, arm) for seed in cfg.seeds for arm in arms
            if (cfg.out / f"seed_{seed}" / arm / "metrics.jsonl").is_file()}
    if not runs:
        return None
    out = cfg.results / "compare"
    write_compare_report(out, runs)
    return out / "compare.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 seeds, vanilla and east_a1, 2 iterations, smaller sets")
    ap.add_argument("--seeds", type=int, nargs="+", help="seed numbers (default 0..4)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), help=f"default: {' '.join(FULL_ARMS)}")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--train-questions", type=int)
    ap.add_argument("--test-questions", type=int)
    ap.add_argument("--n", type=int, help="samples per training question")
    ap.add_argument("--warm-steps", type=int)
    ap.add_argument("--warm-check-every", type=int, help="warm-start steps between disagreement checks")
    ap.add_argument("--start-model", help="one warm-started model for every seed (tests; breaks per-seed models)")
    ap.add_argument("--out", type=Path, help="models, data and run directories (default runs/study)")
    ap.add_argument("--results", type=Path, help="recorded results, tables and plots (default benchmarks/study)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides for every run")
    ap.add_argument("--analyze-only", action="store_true", help="only tables, plots and STUDY.md's results")
    ap.add_argument("--no-analysis", action="store_true", help="skip tables, plots and STUDY.md")
    ap.add_argument("--study-md", type=Path,
                    help="the file whose generated results block is rewritten (needs its markers); default "
                         "benchmarks/STUDY.md when --results is the default, none otherwise")
    args = ap.parse_args(argv)

    cfg = StudyConfig(**(QUICK if args.quick else {}))
    if args.quick:
        cfg = replace(cfg, out=REPO / "runs" / "study_quick", results=REPO / "runs" / "study_quick" / "results")
    given = {"seeds": args.seeds and tuple(args.seeds), "arms": args.arms and tuple(args.arms),
             "iterations": args.iterations, "train_questions": args.train_questions,
             "test_questions": args.test_questions, "n": args.n, "warm_steps": args.warm_steps,
             "warm_check_every": args.warm_check_every, "start_model": args.start_model,
             "out": args.out, "results": args.results}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    cfg = replace(cfg, overrides=(f"rollout.n={cfg.n}", *cfg.overrides, *args.overrides))
    failed = 0
    if not args.analyze_only:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "study_config.json").write_text(json.dumps(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}, indent=2))
        failed = run_study(cfg)
        report = compare_report(cfg)
        if report is not None:
            print(f"[study] compare report of this command's runs: {report}", flush=True)
    if not args.no_analysis:
        from benchmarks.study.study_report import analyze

        # vanilla stays the reference when a later command adds arms (e.g. --arms dpo_vanilla dpo_east_a1)
        arms_recorded = {arm for arm, _, _ in recorded(cfg.results)}
        reference = "vanilla" if "vanilla" in arms_recorded else cfg.arms[0]
        default_md = REPO / "benchmarks" / "STUDY.md" if cfg.results == StudyConfig().results else None
        analyze(cfg.results, reference=reference, study_md=None if args.quick else (args.study_md or default_md))
    if failed:
        print(f"[study] {failed} run(s) failed; rerun the same command to resume them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
