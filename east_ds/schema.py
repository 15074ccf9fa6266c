"""Column contracts of the tables that pass between phases. One place, so every phase agrees.

rollouts.parquet   one row per sampled response
questions.parquet  one row per training question, with its entropy and weight
examples.parquet   the training examples of one loss, each carrying its question's weight
"""

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

# Every examples table has question_id, prompt, weight; then per loss:
SFT_COLUMNS = ("question_id", "prompt", "response", "weight")
DPO_COLUMNS = ("question_id", "prompt", "chosen", "rejected", "weight")
# KTO: label True = desirable (a correct response), False = undesirable. `kl_response` is another question's
# response, paired with this prompt for KTO's KL reference estimate (unweighted).
KTO_COLUMNS = ("question_id", "prompt", "response", "label", "kl_response", "weight")
EXAMPLE_COLUMNS = {"sft": SFT_COLUMNS, "dpo": DPO_COLUMNS, "kto": KTO_COLUMNS}

# Added by the reference phase (frozen starting model, summed log-probs of the response tokens incl. EOS):
REFERENCE_COLUMNS = {
    "sft": (),
    "dpo": ("ref_chosen_logp", "ref_rejected_logp"),
    "kto": ("ref_logp", "ref_kl_logp"),
}
