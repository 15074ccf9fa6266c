"""Choosing the training examples of each kept question (docs/method.md section 1, step 7). Pure.

- SFT: one randomly chosen correct response per question (the reference behaviour), or all distinct correct ones.
- DPO: chosen = a random correct response; rejected = a random response from the most frequent wrong-answer
  cluster (ties: the cluster seen first). One pair per question.
- KTO: the DPO pair's chosen response as a desirable example and its rejected one as an undesirable example, both
  with the question's weight; each gets another question's response as `kl_response` for the (unweighted) KL
  reference estimate.

Randomness comes from a generator seeded by (seed, question_id), so a question's choice does not depend on the
order of the table or on which other questions are present.

SELECT holds one row per loss of schema.LOSSES (its selection function and the response the perplexity baseline
scores); tests/test_config.py checks that both tables name the same losses.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from east_ds.schema import loss_spec


def question_rng(seed: int, question_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, question_id)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(str(question_id).encode("utf-8"))])


class KeptQuestion(NamedTuple):
    """One kept question's graded responses, as a selection function sees them."""

    question_id: str
    prompt: str
    right: pd.DataFrame  # correct responses, in sample order
    wrong: pd.DataFrame  # wrong responses, in sample order
    weight: float
    rng: np.random.Generator  # question_rng(seed, question_id)


def _pick(rng: np.random.Generator, rows: pd.DataFrame) -> pd.Series:
    return rows.iloc[int(rng.integers(len(rows)))]


def _rejected_cluster(wrong: pd.DataFrame) -> pd.DataFrame:
    """Rows of the largest wrong-answer cluster; ties go to the cluster whose first sample comes first."""
    sizes = wrong.groupby("cluster", sort=False).size()
    first = wrong.groupby("cluster", sort=False)["sample_index"].min()
    best = sorted(sizes.index, key=lambda c: (-sizes[c], first[c]))[0]
    return wrong[wrong["cluster"] == best]


def _pair(q: KeptQuestion) -> tuple[str, str]:
    """(chosen, rejected): a random correct response, a random one of the largest wrong-answer cluster."""
    chosen = _pick(q.rng, q.right)["response"]
    return chosen, _pick(q.rng, _rejected_cluster(q.wrong))["response"]


# ----------------------------------------------------------------------------------------------------------------
# One selection function per loss: (kept questions in id order, sft_examples) -> rows of the loss's examples table.
# `sft_examples` ("one" or "all") is SFT's option; the others ignore it.


def select_sft(kept: list[KeptQuestion], sft_examples: str) -> list[dict]:
    """A random correct response per question, or (sft_examples="all") each distinct correct one."""
    rows = []
    for q in kept:
        if sft_examples == "all":
            responses = list(dict.fromkeys(q.right["response"]))  # distinct, in sample order
        else:
            responses = [_pick(q.rng, q.right)["response"]]
        rows += [{"question_id": q.question_id, "prompt": q.prompt, "response": r, "weight": q.weight}
                 for r in responses]
    return rows


def select_dpo(kept: list[KeptQuestion], sft_examples: str) -> list[dict]:
    """One (chosen, rejected) pair per question (`_pair`)."""
    rows = []
    for q in kept:
        chosen, rejected = _pair(q)
        rows.append({"question_id": q.question_id, "prompt": q.prompt, "chosen": chosen, "rejected": rejected,
                     "weight": q.weight})
    return rows


def select_kto(kept: list[KeptQuestion], sft_examples: str) -> list[dict]:
    """The DPO pair as a desirable and an undesirable example, each with another question's KL response."""
    rows = []
    for q in kept:
        chosen, rejected = _pair(q)
        for response, label in ((chosen, True), (rejected, False)):
            rows.append({"question_id": q.question_id, "prompt": q.prompt, "response": response, "label": label,
                         "weight": q.weight})
    # KL pairs: prompt i with the response of example i + 2 (another question's; +1 is the same question's
    # other example). With a single question the pair falls back to its own examples.
    shift = 2 if len(rows) > 2 else 0
    for i, row in enumerate(rows):
        row["kl_response"] = rows[(i + shift) % len(rows)]["response"]
    return rows


@dataclass(frozen=True)
class Selection:
    """A loss's part of the weighting stage."""

    select: Callable[[list[KeptQuestion], str], list[dict]]  # kept questions -> example rows
    scored: Callable[[pd.DataFrame], pd.DataFrame]  # examples -> the rows whose `response` the perplexity
    # baseline scores, one or more per question


SELECT: dict[str, Selection] = {
    "sft": Selection(select_sft, scored=lambda ex: ex),  # the SFT example(s)
    "dpo": Selection(select_dpo, scored=lambda ex: ex.rename(columns={"chosen": "response"})),  # the chosen one
    "kto": Selection(select_kto, scored=lambda ex: ex[ex["label"].astype(bool)]),  # the desirable one
}


def kept_questions(graded: pd.DataFrame, questions: pd.DataFrame, seed: int) -> list[KeptQuestion]:
    """The kept questions that have graded responses, in question-id order, each with its own generator."""
    weights = questions.loc[questions["kept"], ["question_id", "weight"]].set_index("question_id")["weight"]
    usable = graded[graded["question_id"].isin(weights.index) & graded["cluster"].ge(0)]
    usable = usable.sort_values(["question_id", "sample_index"], kind="stable")
    out = []
    for qid, group in usable.groupby("question_id", sort=True):
        prompt = group["prompt"].iloc[0] if "prompt" in group.columns else group["question"].iloc[0]
        out.append(KeptQuestion(qid, prompt, group[group["correct"]], group[~group["correct"]],
                                float(weights[qid]), question_rng(seed, qid)))
    return out


def select_examples(
    graded: pd.DataFrame,
    questions: pd.DataFrame,
    loss: str,
    seed: int = 0,
    sft_examples: str = "one",
) -> pd.DataFrame:
    """The examples table for `loss` (a name in schema.LOSSES) from graded rollouts and the weighted questions.

    `graded` has the rollout columns plus `correct` and `cluster` (see weighting.grade_rollouts); `questions`
    has `question_id, kept, weight`. Only kept questions contribute. Columns follow LOSSES[loss].example_columns.
    """
    spec = loss_spec(loss)
    if sft_examples not in ("one", "all"):
        raise ValueError(f"sft_examples must be 'one' or 'all', not {sft_examples!r}")
    rows = SELECT[loss].select(kept_questions(graded, questions, seed), sft_examples)
    return pd.DataFrame(rows, columns=list(spec.example_columns))


def scored_responses(examples: pd.DataFrame, loss: str) -> pd.DataFrame:
    """The response each question is scored by for the perplexity baseline, as an SFT-shaped table
    (question_id, prompt, response, weight 1): SELECT[loss].scored of the examples."""
    loss_spec(loss)  # an unknown name is an error naming the choices
    scored = SELECT[loss].scored(examples)
    return scored[["question_id", "prompt", "response"]].assign(weight=1.0).reset_index(drop=True)
