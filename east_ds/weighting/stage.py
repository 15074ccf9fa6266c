"""The weighting stage: rollouts table -> questions.parquet + examples.parquet (+ graded.parquet).

`east-ds weight ROLLOUTS --a A --value entropy --loss sft --out DIR` runs it alone; the driver calls `weigh`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from east_ds.config import WeightingConfig
from east_ds.schema import LOSSES
from east_ds.tables import TableError, read_table, write_table
from east_ds.weighting.mapping import VALUES, WeightingError, attach_weights, grade_rollouts, value_spec
from east_ds.weighting.selection import scored_responses, select_examples

ROLLOUT_REQUIRED = ("question_id", "question", "gold", "response")


def weigh(rollouts: pd.DataFrame, cfg: WeightingConfig, loss: str, out_dir: str | Path,
          where: str = "rollouts",
          perplexity: Callable[[pd.DataFrame], pd.Series] | None = None) -> dict:
    """Grade, cluster, filter; select `loss` examples; weight them; write the three tables. Returns metrics.

    Examples are selected before the weights are computed because the perplexity baseline scores the selected
    response: `perplexity(table)` takes scored_responses(...) and returns question_id -> mean token NLL. It is
    called for every value whose VALUES row says `needs_trainer`; the scores become the value's column.
    """
    value = value_spec(cfg.value)
    t0 = time.perf_counter()
    out = Path(out_dir)
    graded, questions = grade_rollouts(rollouts, cluster_by=cfg.cluster_by, where=where)
    t_grade = time.perf_counter() - t0
    # a = 0 gives every kept question weight 1: a placeholder until the real weights are known
    examples = select_examples(graded, attach_weights(questions, 0.0), loss, seed=cfg.seed,
                               sft_examples=cfg.sft_examples)
    if value.needs_trainer:
        if perplexity is None:
            raise WeightingError(f"value {cfg.value!r} needs a model to score the selected responses "
                                 f"(use `east-ds run` with weighting.value={cfg.value})")
        scores = perplexity(scored_responses(examples, loss))
        questions[cfg.value] = questions["question_id"].map(scores)
        unscored = questions["kept"] & ~(questions[cfg.value] > 0)
        questions.loc[unscored, ["kept", "drop_reason"]] = [False, "unscored"]
    questions = attach_weights(questions, cfg.a, cfg.value, cfg.cap_at_most_correct)
    examples = examples[examples["question_id"].isin(questions.loc[questions["kept"], "question_id"])]
    examples = examples.assign(weight=examples["question_id"].map(questions.set_index("question_id")["weight"]))
    examples = examples.reset_index(drop=True)
    write_table(graded, out / "graded.parquet")
    write_table(questions, out / "questions.parquet")
    write_table(examples, out / "examples.parquet")
    kept = questions[questions["kept"]]
    return {
        "questions": int(len(questions)),
        "kept": int(len(kept)),
        "dropped_all_correct": int((questions["drop_reason"] == "all_correct").sum()),
        "dropped_all_wrong": int((questions["drop_reason"] == "all_wrong").sum()),
        "dropped_skipped": int((questions["drop_reason"] == "skipped").sum()),
        "examples": int(len(examples)),
        "train_accuracy": float(graded["correct"].mean()),
        "mean_entropy_kept": float(kept["entropy"].mean()),
        "weight_min": float(kept["weight"].min()),
        "weight_max": float(kept["weight"].max()),
        "grade_seconds": t_grade,
        "weigh_seconds": time.perf_counter() - t0,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weight", help="grade, cluster and weight a rollouts table; select training examples",
                       description=__doc__)
    p.add_argument("rollouts", help="JSONL or Parquet with question_id, question, gold, response [, sample_index]")
    p.add_argument("--a", type=float, default=1.0, help="exponent of the mapping function (0: vanilla)")
    p.add_argument("--value", choices=[v for v, spec in VALUES.items() if not spec.needs_trainer],
                   default="entropy")
    p.add_argument("--loss", choices=list(LOSSES), default="sft")
    p.add_argument("--cluster-by", choices=["equivalent", "exact"], default="equivalent")
    p.add_argument("--sft-examples", choices=["one", "all"], default="one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = WeightingConfig(a=args.a, value=args.value, cluster_by=args.cluster_by,
                          sft_examples=args.sft_examples, seed=args.seed)
    try:
        rollouts = read_table(args.rollouts, required=ROLLOUT_REQUIRED)
        m = weigh(rollouts, cfg, args.loss, args.out, where=str(args.rollouts))
    except (TableError, WeightingError) as e:
        print(f"east-ds weight: error: {e}", file=sys.stderr)
        return 2
    print(f"{m['kept']}/{m['questions']} questions kept (all correct {m['dropped_all_correct']}, "
          f"all wrong {m['dropped_all_wrong']}); {m['examples']} {args.loss} examples; "
          f"weights {m['weight_min']:.3f}..{m['weight_max']:.3f}; train accuracy {m['train_accuracy']:.3f}")
    print(f"wrote {args.out}/questions.parquet, examples.parquet, graded.parquet")
    return 0
