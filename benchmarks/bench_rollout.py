"""Rollout throughput: EnginePool (Ray actor + sharding) against one raw `LLM.generate`, and vLLM-CPU against HF.

    .venv/bin/python benchmarks/bench_rollout.py [--sizes tiny small] [--prompts 32] [--n 4] [--new-tokens 64]

For each tiny-model size, on the same prompts and sampling settings (temperature 1, per-prompt seeds):
  raw   one `vllm.LLM.generate` call in this process (the floor the pool is measured against)
  pool  `EnginePool.generate` with one engine actor (target: under 10% slower than raw)
  hf    transformers `generate` (batched, left padding), the same prompts and settings
Generated tokens / wall second, best of --repeats after a warm-up; ratios printed at the end. The engine
environment (VLLM_CPU_KVCACHE_SPACE=1, VLLM_ENABLE_V1_MULTIPROCESSING=0) is set here if not already.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0", "EAST_DS_NO_TQDM": "1"}.items():
    os.environ.setdefault(k, v)


def best_rate(fn, repeats: int) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        rates.append(tokens / (time.perf_counter() - t0))
    return max(rates)


def bench_size(size: str, args, root: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east_ds.config import ModelConfig, RolloutConfig
    from east_ds.data import render_prompt
    from east_ds.engine_pool import EnginePool, Sampling
    from east_ds.rollout import request_seed
    from east_ds.synthetic import make_problems
    from east_ds.tiny import build_tiny_model

    path = str(build_tiny_model(os.path.join(root, size), size=size))
    tok = AutoTokenizer.from_pretrained(path)
    texts = [render_prompt(tok, p.question) for p in make_problems(args.prompts, seed=5)]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    seeds = [request_seed(0, 0, i) for i in range(len(ids))]
    sampling = Sampling(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    out = {"size": size, "prompts": len(ids), "n": args.n, "max_new_tokens": args.new_tokens, "dtype": args.dtype}

    # -- raw vLLM in this process ------------------------------------------------------------------------------
    from vllm import LLM, SamplingParams

    # the same engine settings as LLMEngine on CPU (whole-prompt prefill, see vllm_engine.py)
    llm = LLM(model=path, seed=0, dtype=args.dtype, max_model_len=1024, enforce_eager=True,
              enable_chunked_prefill=False, max_num_batched_tokens=4096)
    params = [SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, seed=s)
              for s in seeds]
    prompts = [{"prompt_token_ids": x} for x in ids]

    def raw():
        outs = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    out["raw_tok_s"] = best_rate(raw, args.repeats)
    del llm
    gc.collect()

    # -- the pool, one engine ----------------------------------------------------------------------------------
    from east_ds.ray_utils import init_ray

    init_ray()
    cfg = RolloutConfig(num_engines=1, max_model_len=1024, shard_size=64, seed=0)
    pool = EnginePool(path, cfg, ModelConfig(dtype=args.dtype))

    def pooled():
        res = pool.generate(ids, sampling, seeds=seeds)
        return sum(s["num_tokens"] for r in res for s in r)

    out["pool_tok_s"] = best_rate(pooled, args.repeats)
    pool.shutdown()

    # -- HF generate -----------------------------------------------------------------------------------------------
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def hf():
        with torch.no_grad():
            gen = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=args.new_tokens, num_return_sequences=args.n,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = gen[:, batch["input_ids"].shape[1]:]
        # tokens up to and including the first EOS (what vLLM counts), padding after it excluded
        n_tok = 0
        for row in new.tolist():
            n_tok += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        return n_tok

    out["hf_tok_s"] = best_rate(hf, args.repeats)
    out["pool_over_raw"] = out["pool_tok_s"] / out["raw_tok_s"]
    out["pool_overhead_pct"] = 100 * (1 - out["pool_over_raw"])
    out["vllm_over_hf"] = out["raw_tok_s"] / out["hf_tok_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            results.append(bench_size(size, args, root))
    print()
    print(f"{'size':6} {'raw tok/s':>10} {'pool tok/s':>11} {'hf tok/s':>9} {'pool/raw':>9} {'overhead':>9} "
          f"{'vllm/hf':>8}")
    for r in results:
        print(f"{r['size']:6} {r['raw_tok_s']:10.0f} {r['pool_tok_s']:11.0f} {r['hf_tok_s']:9.0f} "
              f"{r['pool_over_raw']:9.3f} {r['pool_overhead_pct']:8.1f}% {r['vllm_over_hf']:8.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
