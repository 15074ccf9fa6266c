"""GPU training throughput: a ~0.5B-parameter Llama-shaped random model, ZeRO-2 bf16, tokens/s and MFU.

    deepspeed --num_gpus 1 benchmarks/gpu_train_throughput.py --steps 10 --seq 1024 --micro 8 --gas 2
    python benchmarks/gpu_train_throughput.py            # also works: a lone process is a world of one

Builds the model from a config (no download), writes it with a byte-level tokenizer, fits synthetic SFT examples
of `--seq` tokens through east_ds.training.engine.TrainingEngine and reports median step time, tokens/s per GPU and
MFU = 6 * N_params * tokens/s / peak bf16 FLOP/s (--peak-tflops, 989 for an H100 SXM dense bf16; attention FLOPs
are not counted, so MFU is slightly understated). Not run in this session: no GPU was available.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd


def build_model(out: Path, hidden: int, layers: int, heads: int, inter: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from east_ds.data.tiny import build_tokenizer

    tok = build_tokenizer(out, vocab_size=512)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(out))
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--gas", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--config", default="ds_configs/zero2.json")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--local_rank", type=int, default=0)
    args = ap.parse_args()

    import torch

    from east_ds.training import batches as td
    from east_ds.training import engine as te
    from east_ds.config import ModelConfig, TrainConfig

    rank, world = te.init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        if rank == 0:
            build_model(path, hidden=1024, layers=24, heads=16, inter=2816)  # ~0.47B with a 32k vocabulary
        torch.distributed.barrier()
        cfg = TrainConfig(loss="sft", lr=1e-5, epochs=1, global_batch_size=args.micro * args.gas * world,
                          micro_batch_size=args.micro, gradient_accumulation_steps=args.gas, warmup_ratio=0.0,
                          max_len=args.seq, deepspeed_config=args.config,
                          gradient_checkpointing=not args.no_checkpointing)
        eng = te.TrainingEngine(str(path), cfg, ModelConfig(dtype="bfloat16"), total_steps=args.steps + 1)
        n_params = sum(p.numel() for p in eng.engine.module.parameters())
        # synthetic examples: a 32-token prompt and a response filling the sequence (random token ids)
        g = torch.Generator().manual_seed(0)
        n_ex = cfg.global_batch_size * (args.steps + 1)
        seqs = [[(torch.randint(10, 32000, (args.seq,), generator=g).tolist(), 32)] for _ in range(n_ex)]
        ex = td.TokenizedExamples(loss="sft", seqs=seqs, weights=__import__("numpy").ones(n_ex),
                                  rows=__import__("numpy").arange(n_ex))
        steps = td.plan(ex.lengths(), cfg.global_batch_size, cfg.micro_batch_size, 1, 0)
        times, toks = [], []
        for s in range(args.steps + 1):
            mbs = [td.micro_batch_tensors(ex, idx, eng.pad_id) for idx in td.rank_micro_batches(steps[s], rank, world)]
            torch.cuda.synchronize()
            m = eng.train_step(mbs)
            torch.cuda.synchronize()
            if s > 0:
                times.append(m["step_time"])
                toks.append(m["tokens"])
        eng.close()
    tps = sum(toks) / sum(times) / world
    res = {"params": n_params, "world": world, "seq": args.seq, "micro": args.micro, "gas": args.gas,
           "step_s": statistics.median(times), "tokens_per_s_per_gpu": tps,
           "mfu": 6 * n_params * tps / (args.peak_tflops * 1e12), "gpu": torch.cuda.get_device_name(0)}
    if rank == 0:
        print(json.dumps(res))
    te.shutdown_distributed()


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
