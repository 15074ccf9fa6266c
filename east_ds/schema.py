"""Column contracts of the tables that pass between phases. One place, so every phase agrees.

rollouts.parquet   one row per sampled response
questions.parquet  one row per training question, with its entropy and weight
examples.parquet   the training examples of one loss (LOSSES), each carrying its question's weight
"""

from __future__ import annotations

from dataclasses import dataclass

ROLLOUT_COLUMNS = (
    "question_id",  # str
    "sample_index",  # int, 0..n-1 within the question
    "question",  # str, the raw question text
    "gold",  # str, the gold answer
    "prompt",  # str, the rendered prompt (chat template applied; tokenize without special tokens)
    "response",  # str, the generated text (stop token not included)
    "num_tokens",  # int, generated tokens
    "finish_reason",  # str: "stop", "length", or "skipped" (prompt too long; response empty)
)
# Written by the rollout engines as well: engine (int), seconds (float), skip_reason (str, empty when not skipped).

QUESTION_COLUMNS = (
    "question_id",
    "n",  # responses sampled
    "n_correct",
    "n_clusters",  # distinct final answers ("none" counts as one)
    "entropy",  # -sum_k p_k log p_k over the answer clusters (natural log)
    "accuracy",  # n_correct / n
    "rejected",  # size of the largest wrong-answer cluster / n
    "kept",  # bool: survived the filters (not all wrong, not all correct)
    "weight",  # f(value; a) for kept questions; NaN (empty) for dropped ones
)

# The losses, one row each. Every examples table has question_id, prompt, weight; the rest is the loss's own.
# Adding a loss is one row here plus its selection function (weighting/selection.py, SELECT) and its per-example
# loss (training/losses.py, LOSS_FNS); tests/test_config.py checks that the three tables and
# config.TrainConfig.loss name the same losses.


@dataclass(frozen=True)
class LossSpec:
    """What every stage needs to know about a loss's examples table, as data.

    `sequence_columns` are the text columns tokenised after the shared prompt, in the order they are stacked in
    a micro-batch; the reference phase (frozen starting model, summed log-probs of the response tokens incl.
    EOS) scores them in that order into `reference_columns` (empty: the loss needs no reference model).
    """

    example_columns: tuple[str, ...]  # the examples table, in this order
    sequence_columns: tuple[str, ...]  # text columns that become token sequences (prompt + text + EOS)
    reference_columns: tuple[str, ...] = ()  # added by the reference phase, one per sequence column
    label_column: str | None = None  # a true/false column carried into the micro-batch as `labels`
    kl_column: str | None = None  # a sequence column forwarded apart, without gradients, for a KL reference point;
    # it may be empty (the pair is another question's response)
    prompt_budget: bool = False  # prompts over training.max_prompt_len tokens are dropped

    @property
    def needs_reference(self) -> bool:
        """True when training reads the frozen starting model's log-probs (the reference phase runs)."""
        return bool(self.reference_columns)

    @property
    def sequences_with_grad(self) -> int:
        """Sequences of one example that go through the model's forward and backward (KL pairs do not)."""
        return len(self.sequence_columns) - (self.kl_column is not None)


LOSSES: dict[str, LossSpec] = {
    # one correct response per kept question (or all distinct ones), mean token NLL
    "sft": LossSpec(example_columns=("question_id", "prompt", "response", "weight"),
                    sequence_columns=("response",)),
    # a correct (chosen) and a wrong (rejected) response per question, sigmoid DPO on summed log-probs
    "dpo": LossSpec(example_columns=("question_id", "prompt", "chosen", "rejected", "weight"),
                    sequence_columns=("chosen", "rejected"),
                    reference_columns=("ref_chosen_logp", "ref_rejected_logp"),
                    prompt_budget=True),
    # label True = desirable (a correct response), False = undesirable. `kl_response` is another question's
    # response, paired with this prompt for KTO's KL reference estimate (unweighted).
    "kto": LossSpec(example_columns=("question_id", "prompt", "response", "label", "kl_response", "weight"),
                    sequence_columns=("response", "kl_response"),
                    reference_columns=("ref_logp", "ref_kl_logp"),
                    label_column="label", kl_column="kl_response", prompt_budget=True),
}


def loss_spec(loss: str) -> LossSpec:
    """The row of LOSSES for `loss`; an unknown name is a ValueError naming the choices."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[loss]


# Views of LOSSES by column kind, for readers that need only one of them.
EXAMPLE_COLUMNS = {name: spec.example_columns for name, spec in LOSSES.items()}
REFERENCE_COLUMNS = {name: spec.reference_columns for name, spec in LOSSES.items()}
