"""Training: the entropy-weighted SFT, DPO or KTO loss on a DeepSpeed ZeRO engine (EAST step 5).

Reads `examples.parquet` (and, for DPO/KTO, the reference log-probs it adds first); writes a checkpoint
directory: `hf/` (save_pretrained), `metrics.jsonl` (per step), `train_summary.json`, and `ds_checkpoint/` while
training is unfinished.

    losses   per-example weighted SFT / DPO / KTO losses and the one reduction (pure torch)
    batches  tokenisation, the length-grouped batch plan, padding (no DeepSpeed)
    engine   TrainingEngine, reference_logprobs, fit (the only module that imports DeepSpeed)
    actors   TrainRank / TrainerGroup: the same job as Ray actors, one per rank; broadcast_weights
    cli      `deepspeed --module east_ds.train ...` (east_ds/train.py forwards to it) and `east-ds train`

Importing this package loads nothing heavy.
"""
