"""Rollout throughput: EnginePool (Ray actor + sharding) against one raw `LLM.generate`, and vLLM-CPU against HF;
with --seeding, a seed per request (`rollout.seed_per_request`) against unseeded sampling.

    .venv/bin/python benchmarks/bench_rollout.py [--sizes tiny small] [--prompts 32] [--n 4] [--new-tokens 64]
    .venv/bin/python benchmarks/bench_rollout.py --seeding [--sizes tiny] [--prompts 256] [--n 16] [--min-pairs 4]

For each tiny-model size, on the same prompts and sampling settings (temperature 1, per-prompt seeds):
  raw   one `vllm.LLM.generate` call in this process (the floor the pool is measured against)
  pool  `EnginePool.generate` with one engine actor (target: under 10% slower than raw)
  hf    transformers `generate` (batched, left padding), the same prompts and settings
Generated tokens / wall second, best of --repeats after a warm-up; ratios printed at the end. The engine
environment (VLLM_CPU_KVCACHE_SPACE=1, VLLM_ENABLE_V1_MULTIPROCESSING=0) is set here if not already.

--seeding: one `vllm.LLM` in this process, built with east_ds's own CPU engine arguments (cluster/device_plan.py
engine_kwargs, on_gpu=False; RolloutConfig/ModelConfig defaults but max_model_len 1024, the tiny models'
positions), generates the same prompts (temperature 1, top_p 1) in alternating rounds:
  seeded    every question its own `SamplingParams(seed=request_seed(...))`, as rollout/stage.py does with
            seed_per_request (vLLM then makes each such request's draw on its own, in Python, at every step)
  unseeded  seed=None: every request from the engine's generator in one batched draw
One warm-up round of each, then pairs (the order inside a pair alternates: seeded first in even pairs) until
at least --min-pairs pairs are done and the spread (max - min) of the per-pair ratio unseeded/seeded tokens/s
is below its median's distance from 1.0, or the next pair would pass --max-seconds of timed rounds. Each round
also reports its process CPU seconds (all of the engine's threads run in this process) and each pair the ratio
of tokens per CPU second; other jobs inflate CPU time too (OpenMP threads spin while they wait for a core).
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


def seeded_draw_ms(batch: int, repeats: int = 200) -> float:
    """Milliseconds of the extra work vLLM-CPU 0.32 does per decode step when `batch` requests are seeded
    (TopKTopPSampler.forward_cpu: one seed drawn from each request's own generator, in a Python loop, before the
    batch's fused Gumbel-argmax); the best of `repeats`."""
    import torch

    gens = {i: torch.Generator().manual_seed(i) for i in range(batch)}
    best = float("inf")
    for _ in range(repeats):
        seeds = torch.randint(0, 2**31, (batch,), dtype=torch.long)
        t0 = time.perf_counter()
        for i, g in gens.items():
            seeds[i] = torch.randint(0, 2**31, (1,), generator=g, dtype=torch.long).item()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def bench_seeding(size: str, args, root: str) -> dict:
    import statistics

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from east_ds.cluster import device_plan as plan
    from east_ds.config import ModelConfig, RolloutConfig
    from east_ds.data.load import render_prompt
    from east_ds.data.synthetic import make_problems
    from east_ds.data.tiny import build_tiny_model
    from east_ds.rollout.stage import request_seed

    path = str(build_tiny_model(os.path.join(root, size), size=size))
    tok = AutoTokenizer.from_pretrained(path)
    texts = [render_prompt(tok, p.question) for p in make_problems(args.prompts, seed=5)]
    prompts = [{"prompt_token_ids": tok.encode(t, add_special_tokens=False)} for t in texts]

    # the engine east_ds builds on a CPU (LLMEngine in rollout/vllm_engine.py), with the rollout's default
    # settings but the tiny models' 1024 positions as max_model_len
    rc, mc = RolloutConfig(max_model_len=1024), ModelConfig()
    dtype = args.dtype or mc.dtype
    defaults = plan.rollout_defaults(on_gpu=False, colocated=False)
    kwargs = plan.engine_kwargs(path, rc.seed, dtype, rc.max_model_len, 1, rc.enable_prefix_caching,
                                mc.trust_remote_code, on_gpu=False, enforce_eager=defaults.enforce_eager,
                                gpu_memory_utilization=defaults.gpu_memory_utilization, enable_sleep=False)
    llm = LLM(**kwargs)
    max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs  # requests batched per step

    def params(seeded: bool) -> list:
        return [SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens,
                               seed=request_seed(rc.seed, 0, i) if seeded else None) for i in range(len(prompts))]

    modes = {"seeded": params(True), "unseeded": params(False)}

    def run(mode: str) -> tuple[int, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        outs = llm.generate(prompts, modes[mode], use_tqdm=False)
        return (sum(len(c.token_ids) for o in outs for c in o.outputs), time.perf_counter() - t0,
                time.process_time() - c0)

    for mode in modes:  # warm-up
        run(mode)
    rounds, ratios, cpu_ratios = [], [], []
    start = time.perf_counter()
    pair_s = 0.0
    while True:
        k = len(ratios)
        if k >= args.min_pairs and (max(ratios) - min(ratios) < abs(statistics.median(ratios) - 1.0)
                                    or time.perf_counter() - start + pair_s > args.max_seconds):
            break
        t_pair = time.perf_counter()
        rate, cpu_rate = {}, {}
        for mode in (("seeded", "unseeded") if k % 2 == 0 else ("unseeded", "seeded")):
            tokens, secs, cpu = run(mode)
            rate[mode], cpu_rate[mode] = tokens / secs, tokens / cpu
            rounds.append({"pair": k, "mode": mode, "tokens": tokens, "seconds": secs, "cpu_seconds": cpu,
                           "tok_s": rate[mode], "load1": os.getloadavg()[0]})
            print(f"pair {k:2d} {mode:8} {rate[mode]:9.0f} tok/s  ({tokens} tokens in {secs:.2f} s, "
                  f"{cpu:.2f} CPU s, load {os.getloadavg()[0]:.1f})", flush=True)
        ratios.append(rate["unseeded"] / rate["seeded"])
        cpu_ratios.append(cpu_rate["unseeded"] / cpu_rate["seeded"])
        pair_s = time.perf_counter() - t_pair
        print(f"pair {k:2d} unseeded/seeded {ratios[-1]:.3f} (per CPU second {cpu_ratios[-1]:.3f})", flush=True)
    med = statistics.median(ratios)
    spread = max(ratios) - min(ratios)
    # per decode step: the median round's seconds over its steps (about tokens / batch, the batch kept full)
    batch = min(max_num_seqs, len(prompts) * args.n)
    step_ms = 1e3 * statistics.median(r["seconds"] / (r["tokens"] / batch) for r in rounds)
    draw_ms = seeded_draw_ms(batch)
    del llm
    gc.collect()
    return {"size": size, "prompts": len(prompts), "n": args.n, "max_new_tokens": args.new_tokens, "dtype": dtype,
            "engine_kwargs": {k: v for k, v in kwargs.items() if k != "model"}, "max_num_seqs": max_num_seqs,
            "batch": batch, "rounds": rounds, "ratios": ratios, "cpu_ratios": cpu_ratios,
            "cpu_median": statistics.median(cpu_ratios), "median": med, "min": min(ratios), "max": max(ratios),
            "spread": spread, "resolved": spread < abs(med - 1.0), "timed_s": time.perf_counter() - start,
            "step_ms": step_ms, "seeded_draw_ms": draw_ms,
            "seeded_tok_s_median": statistics.median(r["tok_s"] for r in rounds if r["mode"] == "seeded"),
            "unseeded_tok_s_median": statistics.median(r["tok_s"] for r in rounds if r["mode"] == "unseeded")}


def print_seeding(results: list[dict]) -> None:
    print()
    print(f"{'size':6} {'pairs':>5} {'seeded tok/s':>13} {'unseeded tok/s':>15} {'unseeded/seeded median':>23} "
          f"{'[min, max]':>15} {'spread':>7} {'|median-1|':>10}")
    for r in results:
        print(f"{r['size']:6} {len(r['ratios']):5d} {r['seeded_tok_s_median']:13.0f} "
              f"{r['unseeded_tok_s_median']:15.0f} {r['median']:23.3f} "
              f"{'[%.3f, %.3f]' % (r['min'], r['max']):>15} {r['spread']:7.3f} {abs(r['median'] - 1):10.3f}")
        print(f"       per-pair ratios: {', '.join(f'{x:.3f}' for x in r['ratios'])}")
        print(f"       per CPU second: median {r['cpu_median']:.3f}; per pair "
              f"{', '.join(f'{x:.3f}' for x in r['cpu_ratios'])}")
        print(f"       seeded draws of {r['batch']} requests: {r['seeded_draw_ms']:.2f} ms per step, against "
              f"about {r['step_ms']:.1f} ms per step (expected cost {r['seeded_draw_ms'] / r['step_ms']:.1%})")
        if not r["resolved"]:
            print(f"       spread {r['spread']:.3f} is NOT below |median - 1| = {abs(r['median'] - 1):.3f} "
                  f"after {r['timed_s']:.0f} s: no difference shown")


def bench_size(size: str, args, root: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east_ds.config import ModelConfig, RolloutConfig
    from east_ds.data.load import render_prompt
    from east_ds.rollout.engine_pool import EnginePool, Sampling
    from east_ds.rollout.stage import request_seed
    from east_ds.data.synthetic import make_problems
    from east_ds.data.tiny import build_tiny_model

    path = str(build_tiny_model(os.path.join(root, size), size=size))
    tok = AutoTokenizer.from_pretrained(path)
    texts = [render_prompt(tok, p.question) for p in make_problems(args.prompts, seed=5)]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    seeds = [request_seed(0, 0, i) for i in range(len(ids))]
    sampling = Sampling(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    out = {"size": size, "prompts": len(ids), "n": args.n, "max_new_tokens": args.new_tokens, "dtype": args.dtype}

    # -- raw vLLM in this process ------------------------------------------------------------------------------
    from vllm import LLM, SamplingParams

    # the same engine settings as LLMEngine on CPU (whole-prompt prefill, see east_ds/rollout/vllm_engine.py)
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
    from east_ds.cluster.ray_utils import init_ray

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
    ap.add_argument("--seeding", action="store_true",
                    help="seed per request against unseeded, alternating rounds on one in-process engine")
    ap.add_argument("--sizes", nargs="+", default=None, help="default: tiny small; with --seeding, tiny")
    ap.add_argument("--prompts", type=int, default=None, help="default: 32; with --seeding, 256")
    ap.add_argument("--n", type=int, default=None, help="default: 4; with --seeding, 16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--min-pairs", type=int, default=4, help="--seeding: at least this many pairs")
    ap.add_argument("--max-seconds", type=float, default=540.0,
                    help="--seeding: no new pair once the timed rounds would pass this (per size)")
    args = ap.parse_args()
    args.sizes = args.sizes or (["tiny"] if args.seeding else ["tiny", "small"])
    args.prompts = args.prompts or (256 if args.seeding else 32)
    args.n = args.n or (16 if args.seeding else 4)
    results = []
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            results.append((bench_seeding if args.seeding else bench_size)(size, args, root))
    if args.seeding:
        print_seeding(results)
        print(json.dumps(results))
        return
    print()
    print(f"{'size':6} {'raw tok/s':>10} {'pool tok/s':>11} {'hf tok/s':>9} {'pool/raw':>9} {'overhead':>9} "
          f"{'vllm/hf':>8}")
    for r in results:
        print(f"{r['size']:6} {r['raw_tok_s']:10.0f} {r['pool_tok_s']:11.0f} {r['hf_tok_s']:9.0f} "
              f"{r['pool_over_raw']:9.3f} {r['pool_overhead_pct']:8.1f}% {r['vllm_over_hf']:8.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
