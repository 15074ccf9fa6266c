"""Training: the entropy-weighted SFT, DPO or KTO loss on a DeepSpeed ZeRO engine (EAST step 5).

Reads `examples.parquet` (and, for DPO/KTO, the reference log-probs it adds first); writes a checkpoint
directory: `hf/` (save_pretrained), `metrics.jsonl` (per step), `train_summary.json`, and `ds_checkpoint/` while
training is unfinished; a diverged step leaves `diverged.json` instead (and no `hf/`).

    losses      per-example weighted SFT / DPO / KTO losses and the one reduction (pure torch)
    batches     tokenisation, the length-grouped batch plan, padding (no DeepSpeed)
    ds_config   the DeepSpeed config generated from TrainConfig and ModelConfig
    divergence  what a diverged step is; TrainingDiverged, which stops training and names the step
    engine      TrainingEngine, reference_logprobs, fit (the only module that imports DeepSpeed)
    actors      TrainRank / TrainerGroup: the same job as Ray actors, one per rank; broadcast_weights
    cli         `deepspeed --module east_ds.train ...` (east_ds/train.py forwards to it) and `east-ds train`

Importing this package loads nothing heavy.
"""
