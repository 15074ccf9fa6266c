"""Choosing the training examples of each kept question (docs/method.md section 1, step 7). Pure.

- SFT: one randomly chosen correct response per question (the reference behaviour), or all distinct correct ones.
- DPO: chosen = a random correct response; rejected = a random response from the most frequent wrong-answer
  cluster (ties: the cluster seen first). One pair per question.
- KTO: the DPO pair's chosen response as a desirable example and its rejected one as an undesirable example, both
  with the question's weight; each gets another question's response as `kl_response` for the (unweighted) KL
  reference estimate.

Randomness comes from a generator seeded by (seed, question_id), so a question's choice does not depend on the
order of the table or on which other questions are present.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from east_ds.schema import EXAMPLE_COLUMNS


def question_rng(seed: int, question_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, question_id)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(str(question_id).encode("utf-8"))])


def _pick(rng: np.random.Generator, rows: pd.DataFrame) -> pd.Series:
    return rows.iloc[int(rng.integers(len(rows)))]


def _rejected_cluster(wrong: pd.DataFrame) -> pd.DataFrame:
    """Rows of the largest wrong-answer cluster; ties go to the cluster whose first sample comes first."""
    sizes = wrong.groupby("cluster", sort=False).size()
    first = wrong.groupby("cluster", sort=False)["sample_index"].min()
    best = sorted(sizes.index, key=lambda c: (-sizes[c], first[c]))[0]
    return wrong[wrong["cluster"] == best]


def select_examples(
    graded: pd.DataFrame,
    questions: pd.DataFrame,
    loss: str,
    seed: int = 0,
    sft_examples: str = "one",
) -> pd.DataFrame:
    """The examples table for `loss` ("sft", "dpo" or "kto") from graded rollouts and the weighted questions.

    `graded` has the rollout columns plus `correct` and `cluster` (see weighting.grade_rollouts); `questions`
    has `question_id, kept, weight`. Only kept questions contribute. Columns follow schema.EXAMPLE_COLUMNS.
    """
    if loss not in EXAMPLE_COLUMNS:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(EXAMPLE_COLUMNS)}")
    if sft_examples not in ("one", "all"):
        raise ValueError(f"sft_examples must be 'one' or 'all', not {sft_examples!r}")
    weights = questions.loc[questions["kept"], ["question_id", "weight"]].set_index("question_id")["weight"]
    usable = graded[graded["question_id"].isin(weights.index) & graded["cluster"].ge(0)]
    usable = usable.sort_values(["question_id", "sample_index"], kind="stable")
    rows: list[dict] = []
    for qid, group in usable.groupby("question_id", sort=True):
        rng = question_rng(seed, qid)
        right, wrong = group[group["correct"]], group[~group["correct"]]
        w = float(weights[qid])
        prompt = group["prompt"].iloc[0] if "prompt" in group.columns else group["question"].iloc[0]
        if loss == "sft":
            if sft_examples == "all":
                for response in dict.fromkeys(right["response"]):  # distinct, in sample order
                    rows.append({"question_id": qid, "prompt": prompt, "response": response, "weight": w})
            else:
                rows.append({"question_id": qid, "prompt": prompt, "response": _pick(rng, right)["response"],
                             "weight": w})
            continue
        chosen = _pick(rng, right)["response"]
        rejected = _pick(rng, _rejected_cluster(wrong))["response"]
        if loss == "dpo":
            rows.append({"question_id": qid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "weight": w})
        else:
            rows.append({"question_id": qid, "prompt": prompt, "response": chosen, "label": True, "weight": w})
            rows.append({"question_id": qid, "prompt": prompt, "response": rejected, "label": False, "weight": w})
    examples = pd.DataFrame(rows, columns=[c for c in EXAMPLE_COLUMNS[loss] if c != "kl_response"])
    if loss == "kto" and len(examples):
        # KL pairs: prompt i with the response of example i + 2 (another question's; +1 is the same question's
        # other example). With a single question the pair falls back to its own examples.
        shift = 2 if len(examples) > 2 else 0
        examples["kl_response"] = np.roll(examples["response"].to_numpy(), -shift)
        examples = examples[list(EXAMPLE_COLUMNS["kto"])]
    return examples.reset_index(drop=True)
