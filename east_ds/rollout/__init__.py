"""Rollout: the current policy samples n answers per question (EAST step 1), and greedy evaluation.

Reads the questions (east_ds.data) and a model; writes `rollouts.parquet` (schema.ROLLOUT_COLUMNS plus engine,
seconds, skip_reason, seed), sharded and resumable, and `eval.parquet` (greedy, graded). Also takes the trained
weights back into the running engines (by path, Ray's object store, or a broadcast from trainer rank 0).

    stage        run_rollout, run_eval
    engine_pool  EnginePool (data-parallel vLLM engines as Ray actors: placement, shards, retry, updates), Sampling
    vllm_engine  LLMEngine / PlacedLLMEngine (the only module that imports vLLM), EastWorkerExtension,
                 TrainerWeightBroadcaster
    cli          `east-ds rollout`, `east-ds eval`

Importing this package loads nothing heavy; vLLM is imported by vllm_engine alone, inside the engine actors.
"""
