"""Training benchmark on CPU, one process: weighted vs unweighted step time, east_ds vs TRL SFTTrainer, padding.

    .venv/bin/python benchmarks/bench_train.py --sizes tiny small --steps 6

For each model size (east_ds.data.tiny): the same engine (DeepSpeed ZeRO-0, fp32, world 1) runs steps with the
weighted reduction and with a plain mean (interleaved, first step of each dropped as warm-up); TRL's SFTTrainer
runs the same model, data, micro-batch, accumulation and precision. Then the padding fraction of the batch plan
with and without length grouping. Prints a JSON line per figure and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def make_examples(tok, n: int, seed: int = 0) -> pd.DataFrame:
    from east_ds.data.load import render_prompt
    from east_ds.data.synthetic import make_problems

    rng = np.random.default_rng(seed)
    probs = make_problems(n, seed=seed, prefix="bench")
    rows = []
    for i, p in enumerate(probs):
        sol = (p.solution + " ") * int(rng.integers(1, 6))  # varied lengths, like real rollouts
        rows.append(dict(question_id=str(i), prompt=render_prompt(tok, p.question), response=sol.strip(),
                         weight=float(rng.uniform(0.2, 2.0))))
    return pd.DataFrame(rows)


def bench_east(model: str, df_path: str, steps: int, micro: int, gas: int, max_len: int) -> dict:
    from east_ds.training import batches as td, engine as te, losses
    from east_ds.config import ModelConfig, TrainConfig

    cfg = TrainConfig(loss="sft", lr=1e-5, epochs=50, global_batch_size=micro * gas, micro_batch_size=micro,
                      gradient_accumulation_steps=gas, warmup_ratio=0.0, max_len=max_len,
                      deepspeed_config="ds_configs/zero0.json", gradient_checkpointing=False)
    eng = te.TrainingEngine(model, cfg, ModelConfig(dtype="float32"), total_steps=10_000)
    ex = td.tokenize_examples(pd.read_parquet(df_path), eng.tokenizer, "sft", max_len)
    plan = td.plan(ex.lengths(), cfg.global_batch_size, micro, 50, 0)
    weighted = losses.weighted_batch_loss

    def plain_mean(per, w, B, world, gas_):  # the unweighted reduction, same engine otherwise
        return per.mean()

    times: dict[str, list] = {"weighted": [], "unweighted": []}
    toks: dict[str, list] = {"weighted": [], "unweighted": []}
    s = 0
    for rep in range(steps):
        for name, fn in (("weighted", weighted), ("unweighted", plain_mean)):
            te.weighted_batch_loss = fn
            # the same step's data for both variants, so tokens per step match
            m = eng.train_step([td.micro_batch_tensors(ex, idx, eng.pad_id) for idx in plan[s]])
            if rep > 0:
                times[name].append(m["step_time"])
                toks[name].append(m["tokens"])
        s += 1
    te.weighted_batch_loss = weighted
    eng.close()
    out = {}
    for name in times:
        t = statistics.median(times[name])
        out[name] = {"step_s": t, "tokens_per_s": sum(toks[name]) / sum(times[name])}
    out["overhead_pct"] = 100 * (out["weighted"]["step_s"] / out["unweighted"]["step_s"] - 1)
    out["tokens_per_step"] = float(np.mean(toks["weighted"]))
    return out


def bench_trl(model: str, df: pd.DataFrame, steps: int, micro: int, gas: int, max_len: int, out_dir: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)
    ds = datasets.Dataset.from_pandas(df[["prompt", "response"]].rename(columns={"response": "completion"}))
    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    cfg = SFTConfig(output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=gas,
                    max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=1000,
                    save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False, max_length=max_len,
                    completion_only_loss=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                    dataset_kwargs={"add_special_tokens": False})
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    tr = SFTTrainer(model=m, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    tr.train()
    step_times = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][1:]
    return {"step_s": statistics.median(step_times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--gas", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--no-trl", action="store_true")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from east_ds.training import batches as td
    from east_ds.data.tiny import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model = str(build_tiny_model(Path(tmp) / size, size=size))
            tok = AutoTokenizer.from_pretrained(model)
            df = make_examples(tok, 256)
            path = str(Path(tmp) / f"{size}.parquet")
            df.to_parquet(path)
            r = {"size": size, **bench_east(model, path, args.steps, args.micro, args.gas, args.max_len)}
            if not args.no_trl:
                r["trl"] = bench_trl(model, df, args.steps, args.micro, args.gas, args.max_len, f"{tmp}/trl_{size}")
                r["east_vs_trl_speedup"] = r["trl"]["step_s"] / r["weighted"]["step_s"]
            ex = td.tokenize_examples(df, tok, "sft", args.max_len)
            per = [[len(ids) for ids, _ in s] for s in ex.seqs]
            B = args.micro * args.gas
            r["padding_grouped"] = td.padding_fraction(td.plan(ex.lengths(), B, args.micro, 1, 0, True), per)
            r["padding_ungrouped"] = td.padding_fraction(td.plan(ex.lengths(), B, args.micro, 1, 0, False), per)
            print(json.dumps(r), flush=True)
            rows.append(r)
    print("\n| model | weighted step s | unweighted step s | overhead | tokens/s (weighted) | TRL step s | "
          "east_ds vs TRL | padding grouped / ungrouped |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        trl = f"{r['trl']['step_s']:.3f}" if "trl" in r else "-"
        sp = f"{r['east_vs_trl_speedup']:.2f}x" if "trl" in r else "-"
        print(f"| {r['size']} | {r['weighted']['step_s']:.3f} | {r['unweighted']['step_s']:.3f} | "
              f"{r['overhead_pct']:+.1f}% | {r['weighted']['tokens_per_s']:.0f} | {trl} | {sp} | "
              f"{r['padding_grouped']:.3f} / {r['padding_ungrouped']:.3f} |")
    from east_ds.training.engine import shutdown_distributed

    shutdown_distributed()


if __name__ == "__main__":
    main()
