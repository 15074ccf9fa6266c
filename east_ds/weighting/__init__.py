"""Weighting: grade, cluster, entropy, mapping function, examples (EAST steps 2-4).

Reads `rollouts.parquet`; writes `graded.parquet` (one row per sample with its answer and verdict),
`questions.parquet` (schema.QUESTION_COLUMNS: entropy, filters, weight f(h; a) = h^a N / sum_j h_j^a) and
`examples.parquet` (schema.EXAMPLE_COLUMNS of the loss, each example carrying its question's weight).

    mapping    clusters, entropy, filters and the mapping function (pure numpy; docs/method.md sections 1-4)
    selection  which responses become SFT / DPO / KTO examples (deterministic per question under a seed)
    stage      weigh (the driver's phase) and `east-ds weight`

Pure Python and numpy: no torch, Ray, vLLM or DeepSpeed.
"""
