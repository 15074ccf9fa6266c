"""`east-ds bench CONFIG [key=value ...] --out DIR`: a short, measured slice of your own setup through the real
pipeline: the same EnginePool, run_rollout, weigh, TrainerGroup and phase timers as `east-ds run`.

    rollout     --prompts N training questions x rollout.n samples, once per --engines value, in shards of at
                most rollout.shard_size prompts and at least two per engine (the same shards at every count);
                the engines start once, at the largest count, and each count samples on its first engines
    weigh       grading, clustering, entropy, weights and example selection of the first rollout
    reference   DPO/KTO: the frozen model's log-probs of the examples
    train       --steps K optimizer steps, once per --ranks value (global batch kept; accumulation adjusted)
    update      the trained checkpoint loaded into the running engines

Each phase is also set against its limit, so one table says which phase to fix: the rollout's tokens/s against
the same requests in one raw `LLM.generate` call on one engine (times the engines); training tokens/s against
the same steps as plain DeepSpeed steps (forward, backward, step; no weights, metrics or checkpoints); the weight
update's GB/s against reading the same files once; MFU against the GPU's peak (GPU only); and every phase's
share of the iteration.

Writes DIR/bench.json and DIR/bench.md. Throughputs are tokens generated (or trained on, padding excluded) per
second of the phase; the top-level figures are those of the first --engines / --ranks value. With several values
the scaling efficiency of k is throughput(k) / (k x throughput(1)) (against the smallest value when 1 is not
listed). MFU, on GPUs only: achieved FLOPs / peak, with 2 x parameters FLOPs per generated token and
6 x parameters per trained token (attention FLOPs and recomputation left out, as usual), over the GPUs the phase
holds; the peak is looked up from Ray's accelerator type (dense bf16) unless --peak-tflops gives it.
Scratch outputs go to DIR/work, which each bench clears first so nothing is resumed instead of measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from east_ds.config import ConfigError, RolloutConfig, RunConfig, TrainConfig, load_config
from east_ds.tables import TableError, read_jsonl, read_table, write_json, write_table

if TYPE_CHECKING:
    from east_ds.metrics import Phases
    from east_ds.rollout.engine_pool import EnginePool

# Dense bf16 tensor-core peak per GPU, TFLOP/s, by Ray's accelerator type (vendor data sheets).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def scaling(rows: list[dict], count: str, key: str) -> None:
    """Add `scaling_efficiency` to each row: throughput(k) / (k / k0 x throughput(k0)), k0 the smallest count."""
    base = min(rows, key=lambda r: r[count])
    for r in rows:
        ideal = base[key] * r[count] / base[count]
        r["scaling_efficiency"] = r[key] / ideal if ideal else None


def mfu(tokens_per_s: float | None, flops_per_token: float, gpus: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation, or None without a peak (CPU) or a throughput."""
    if not peak_flops or not tokens_per_s or not gpus:
        return None
    return tokens_per_s * flops_per_token / (gpus * peak_flops)


def device_peak(peak_tflops: float | None) -> tuple[str, float | None]:
    """(device name, peak FLOP/s per GPU) from Ray's accelerator-type resource; (cpu, None) without GPUs."""
    import ray

    res = ray.cluster_resources()
    if not res.get("GPU"):
        return "cpu", None
    kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
    name = kinds[0] if kinds else "unknown GPU"
    tflops = peak_tflops if peak_tflops else PEAK_TFLOPS.get(name)
    return name, tflops * 1e12 if tflops else None


def _fill(examples: Path, rows: int, out: Path) -> tuple[Path, int]:
    """The examples table repeated until it has at least `rows` rows (enough for the asked steps)."""
    df = read_table(examples)
    if len(df) >= rows:
        return examples, len(df)
    df = pd.concat([df] * (rows // len(df) + 1), ignore_index=True)
    return write_table(df, out), len(df)


@dataclasses.dataclass
class _Bench:
    """What the measured parts share: the config and its rollout section as benched (the largest engine count,
    the bench's shard size), the scratch folder, the cluster's GPUs, the model's parameter count, the peak FLOP/s
    per GPU (None on CPUs), the phase timers, and the engine pool once it is up."""

    cfg: RunConfig
    rcfg: RolloutConfig
    work: Path
    gpus: float
    params: int | None
    peak: float | None
    phases: Phases
    pool: EnginePool | None = None


def bench(cfg: RunConfig, out: str | Path, prompts: int = 64, steps: int = 4, engines: list[int] | None = None,
          ranks: list[int] | None = None, peak_tflops: float | None = None) -> dict:
    """Measure the pipeline of `cfg` (see the module docstring); write out/bench.json and out/bench.md."""
    from east_ds.checks.preflight import check_before_run
    from east_ds.cluster.ray_utils import cluster_gpus, init_ray
    from east_ds.cluster.weight_sync import sync_weights
    from east_ds.data.load import load_dataset, load_tokenizer
    from east_ds.metrics import Phases
    from east_ds.schema import REFERENCE_COLUMNS

    out = Path(out)
    engines, ranks = engines or [cfg.rollout.num_engines], ranks or [cfg.training.num_ranks]
    _check_ranks(cfg.training, ranks)
    params = check_before_run(cfg).params
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    questions = load_dataset(cfg.data.train, cfg.data.format, cfg.data.train_split, prompts)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    init_ray(cfg.placement.ray_address)
    device, peak = device_peak(peak_tflops)
    gpus = cluster_gpus()
    # At least two shards per engine at the largest engine count, and the same shards (so the same per-request
    # seeds and samples) at every count.
    shard = max(1, min(cfg.rollout.shard_size, -(-len(questions) // (2 * max(engines)))))
    rcfg = dataclasses.replace(cfg.rollout, num_engines=max(engines), shard_size=shard)
    b = _Bench(cfg, rcfg, work, gpus, params, peak, Phases())
    result: dict = {"config": cfg.name, "model": cfg.model.path, "params": params, "device": device,
                    "peak_flops_per_gpu": peak, "prompts": len(questions), "samples_per_prompt": cfg.rollout.n,
                    "max_new_tokens": cfg.rollout.max_new_tokens, "loss": cfg.training.loss, "steps": steps}
    try:
        b.pool = _start_engines(b)
        rollout_rows = _bench_rollout(b, questions, tokenizer, engines)
        examples = _bench_weigh(b, work / f"engines_{engines[0]}" / "rollouts.parquet", steps, result)
        train_rows = []
        for r in ranks:
            train_rows.append(_bench_train(b, r, steps, examples))
            if REFERENCE_COLUMNS[cfg.training.loss]:
                result.setdefault("reference_s", b.phases.seconds[f"reference_{r}"])
        scaling(train_rows, "ranks", "tokens_per_s")

        exported = work / f"ranks_{ranks[0]}" / "hf"
        with b.phases("update_weights"):
            sync_weights("path", b.pool, None, str(exported), 0)  # LoRA: the adapter
        result["weight_update_s"] = b.phases.seconds["update_weights"]
        result["weight_update_bytes"], result["weight_read_bytes_per_s"] = read_rate(exported)
    finally:
        if b.pool is not None:
            b.pool.shutdown()
    _report(result, rollout_rows, train_rows, peak, out)
    return result


def read_rate(folder: Path) -> tuple[int, float | None]:
    """(bytes, bytes/s) of reading the weight files in `folder` (*.safetensors, *.bin) once, as the engines just
    did: the link a `path` weight update moves them over, here the storage (or its page cache)."""
    import time

    files = [f for f in sorted(folder.iterdir()) if f.suffix in (".safetensors", ".bin")]
    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                nbytes += len(chunk)
    seconds = time.perf_counter() - t0
    return nbytes, nbytes / seconds if seconds else None


def limits(r: dict) -> list[dict]:
    """Each phase of one iteration against its limit, from bench.json's figures (the first engine and rank
    counts): seconds, share of the iteration, the measured rate, the limit's rate, and rate / limit. A limit
    only a GPU gives is None in `limit` with `gpu_only` set."""
    roll, train = r["rollout"][0], r["train"][0]
    seconds = {"rollout": roll["seconds"], "weigh": r["weigh_seconds"], "reference": r.get("reference_s"),
               "train": train["seconds"], "weight update": r["weight_update_s"]}
    total = sum(v for v in seconds.values() if v)
    update_rate = r["weight_update_bytes"] / r["weight_update_s"] / 1e9 if r["weight_update_s"] else None
    read_rate = r["weight_read_bytes_per_s"] / 1e9 if r.get("weight_read_bytes_per_s") else None
    rows = [
        ("rollout", "tokens/s", roll["tokens_per_s"], roll.get("limit_tokens_per_s"),
         "one raw LLM.generate per engine, same requests", False),
        ("weigh", "responses/s", r["grade_responses_per_s"], None, "share of the iteration only", False),
        ("reference", None, None, None, "share of the iteration only", False),
        ("train", "tokens/s", train["tokens_per_s"], train.get("limit_tokens_per_s"),
         "plain DeepSpeed steps, same batches", False),
        ("train", "MFU", train["mfu"], 1.0 if r["peak_flops_per_gpu"] else None, "the GPU's peak FLOP/s",
         not r["peak_flops_per_gpu"]),
        ("weight update", "GB/s", update_rate, read_rate,
         "reading the same files once", False),
    ]
    out = []
    for phase, unit, value, limit, against, gpu_only in rows:
        if phase == "reference" and seconds["reference"] is None:
            continue
        out.append({"phase": phase, "seconds": seconds[phase], "share": seconds[phase] / total if total else None,
                    "unit": unit, "value": value, "limit": limit, "against": against, "gpu_only": gpu_only,
                    "of_limit": value / limit if value is not None and limit else None})
    return out


def _check_ranks(t: TrainConfig, ranks: list[int]) -> None:
    """The global batch is kept at every rank count: accumulation = B / (micro x ranks) must be a whole number."""
    B = t.global_batch_size
    for r in ranks:
        if B % (t.micro_batch_size * r):
            raise ConfigError(f"--ranks {r}: global_batch_size ({B}) is not a multiple of micro_batch_size "
                              f"({t.micro_batch_size}) x {r} ranks")


def _start_engines(b: _Bench) -> EnginePool:
    """One pool at the largest count (what `east-ds run` would ask for), its resources checked first; each count
    samples on its first engines, so the engines start once."""
    from east_ds.cluster.placement import Placement, free_resources, total_resources
    from east_ds.rollout.engine_pool import EnginePool

    cfg = b.cfg
    placement = Placement.of(dataclasses.replace(cfg, rollout=b.rcfg), b.gpus)
    placement.check_resources(total_resources(), free_resources(), cfg.placement.wait_for_resources)
    return EnginePool(cfg.model.path, placement.rollout_config(b.rcfg), cfg.model,
                      resources=cfg.placement.engine_resources, lora_rank=cfg.training.lora.r,
                      **placement.engine_options())


def _bench_rollout(b: _Bench, questions: pd.DataFrame, tokenizer, engines: list[int]) -> list[dict]:
    """Roll the questions out once per engine count into work/engines_<k>: a row per count with its tokens,
    seconds, throughput (in all and per engine), MFU and scaling efficiency."""
    import ray

    from east_ds.rollout.stage import rollout_requests, run_rollout

    # Every engine generates once first, so neither the rollout nor the raw call after it pays a cold engine.
    first = rollout_requests(b.pool, questions.head(1), tokenizer, b.rcfg, b.cfg.data.system_prompt)
    ray.get([e.generate.remote([dict(r, max_tokens=8) for r in first]) for e in b.pool.engines])
    rows = []
    for e in engines:
        with b.pool.serve_from(e) as serving:
            stats = run_rollout(b.pool, questions, tokenizer, b.rcfg, b.work / f"engines_{e}",
                                b.cfg.data.system_prompt).attrs["stats"]
        tps = stats["num_tokens"] / stats["seconds"]
        rows.append({"engines": serving, "tokens": stats["num_tokens"], "seconds": stats["seconds"],
                     "tokens_per_s": tps, "tokens_per_s_per_engine": tps / serving,
                     "mfu": mfu(tps, 2 * (b.params or 0), serving * b.cfg.rollout.tensor_parallel_size, b.peak)})
    scaling(rows, "engines", "tokens_per_s")
    rows[0]["limit_tokens_per_s"] = rows[0]["engines"] * _raw_generate(b, questions, tokenizer)
    return rows


def _raw_generate(b: _Bench, questions: pd.DataFrame, tokenizer) -> float:
    """Tokens/s of the rollout's own requests (same prompts, seeds, sampling) in one raw `LLM.generate` call on
    engine 0: the most one engine gives on them, with no shards, no Ray round trips, no tables."""
    import ray

    from east_ds.rollout.stage import rollout_requests

    requests = rollout_requests(b.pool, questions, tokenizer, b.rcfg, b.cfg.data.system_prompt)
    results, seconds = ray.get(b.pool.engines[0].generate.remote(requests))
    return sum(s["num_tokens"] for r in results for s in r) / seconds if seconds else 0.0


def _bench_weigh(b: _Bench, rollouts_path: Path, steps: int, result: dict) -> Path:
    """Weigh the first rollout (timed as `weigh`) into work/weigh; adds the grading and weighing figures and the
    example counts to `result`. Returns the examples table, repeated to fill `steps` global batches."""
    from east_ds.weighting.stage import weigh

    t, work = b.cfg.training, b.work
    rollouts = read_table(rollouts_path)
    with b.phases("weigh"):
        w = weigh(rollouts, b.cfg.weighting, t.loss, work / "weigh")
    result["grade_responses_per_s"] = len(rollouts) / w["grade_seconds"]
    result["weigh_seconds"] = w["weigh_seconds"]
    if not w["examples"]:
        raise TableError(f"{work / 'weigh'}: the rollouts gave no training example (every question's samples "
                         f"agree: {w['dropped_all_correct']} all right, {w['dropped_all_wrong']} all wrong); "
                         "raise --prompts")
    examples, n_examples = _fill(work / "weigh" / "examples.parquet", steps * t.global_batch_size,
                                 work / "examples_bench.parquet")
    result["examples"] = {"selected": w["examples"], "used": n_examples}
    return examples


def _bench_train(b: _Bench, r: int, steps: int, examples: Path) -> dict:
    """Train `steps` steps on `r` ranks into work/ranks_<r> (the global batch kept), the engines asleep meanwhile
    when they share the GPUs (woken with the starting weights after); DPO/KTO first score the reference (timed as
    reference_<r>). Returns the count's row: steps, tokens, seconds, throughput (in all and per rank), MFU."""
    from east_ds.cluster.placement import Placement, sleep_for_training, wake_around
    from east_ds.schema import REFERENCE_COLUMNS
    from east_ds.training.actors import TrainerGroup

    cfg, t, work, pool = b.cfg, b.cfg.training, b.work, b.pool
    B = t.global_batch_size  # kept: the accumulation absorbs the rank count (_check_ranks)
    tcfg = dataclasses.replace(t, num_ranks=r, gradient_accumulation_steps=B // (t.micro_batch_size * r),
                               max_steps=steps, save_every_steps=0)
    placement = Placement.of(dataclasses.replace(cfg, rollout=b.rcfg, training=tcfg), b.gpus)
    asleep = sleep_for_training(pool, placement)
    group = TrainerGroup(cfg.model.path, tcfg, cfg.model, r, resources=cfg.placement.trainer_resources,
                         **placement.trainer_options(pool.placement_group))
    try:
        train_input = examples
        if REFERENCE_COLUMNS[t.loss]:
            with b.phases(f"reference_{r}"):
                group.reference_logprobs(str(examples), str(work / f"reference_{r}.parquet"))
            train_input = work / f"reference_{r}.parquet"
        group.fit(str(train_input), str(work / f"ranks_{r}"), resume=False)
        plain = group.plain_steps(str(train_input), steps)
    finally:
        group.shutdown()
        if asleep:  # slept engines discarded their weights (sleep level 2): reload them
            wake_around(pool, asleep, lambda: pool.update_weights_from_path(cfg.model.path))
    log = read_jsonl(work / f"ranks_{r}" / "metrics.jsonl")
    tokens, seconds = sum(m["tokens"] for m in log), sum(m["step_time"] for m in log)
    tps = tokens / seconds if seconds else None
    return {"ranks": r, "steps": len(log), "tokens": tokens, "seconds": seconds, "tokens_per_s": tps,
            "tokens_per_s_per_rank": tps / r if tps else None, "mfu": mfu(tps, 6 * (b.params or 0), r, b.peak),
            # the same steps as plain DeepSpeed steps, counted in east_ds's tokens (KTO's KL forward included)
            "plain_seconds": plain["seconds"],
            "limit_tokens_per_s": tokens / plain["seconds"] if plain["seconds"] and plain["steps"] == len(log)
            else None}


def _report(result: dict, rollout_rows: list[dict], train_rows: list[dict], peak: float | None, out: Path) -> None:
    """Add the per-count rows and the headline figures (those of the first engine and rank counts) to `result`;
    write out/bench.json and out/bench.md."""
    result.update(rollout=rollout_rows, train=train_rows,
                  rollout_tokens_per_s=rollout_rows[0]["tokens_per_s"],
                  rollout_tokens_per_s_per_engine=rollout_rows[0]["tokens_per_s_per_engine"],
                  train_tokens_per_s=train_rows[0]["tokens_per_s"],
                  train_tokens_per_s_per_rank=train_rows[0]["tokens_per_s_per_rank"],
                  mfu={"rollout": rollout_rows[0]["mfu"], "train": train_rows[0]["mfu"]} if peak else None)
    result["limits"] = limits(result)
    write_json(result, out / "bench.json")
    (out / "bench.md").write_text(to_markdown(result))


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(r: dict) -> str:
    """bench.json as tables a person reads."""
    lines = [f"# east-ds bench: {r['config']}", "",
             f"model `{r['model']}` ({_fmt((r['params'] or 0) / 1e6)}M parameters) on {r['device']}; "
             f"{r['prompts']} prompts x {r['samples_per_prompt']} samples, up to {r['max_new_tokens']} new tokens; "
             f"{r['loss']} training, {r['steps']} steps", "",
             "| engines | tokens | seconds | tokens/s | tokens/s per engine | scaling | MFU |",
             "|---|---|---|---|---|---|---|"]
    for x in r["rollout"]:
        lines.append(f"| {x['engines']} | {x['tokens']} | {x['seconds']:.2f} | {x['tokens_per_s']:.1f} | "
                     f"{x['tokens_per_s_per_engine']:.1f} | {_fmt(x['scaling_efficiency'], '.2f')} | "
                     f"{_fmt(x['mfu'], '.3f')} |")
    lines += ["", "| ranks | steps | tokens | seconds | tokens/s | tokens/s per rank | scaling | MFU |",
              "|---|---|---|---|---|---|---|---|"]
    for x in r["train"]:
        lines.append(f"| {x['ranks']} | {x['steps']} | {x['tokens']} | {x['seconds']:.2f} | {_fmt(x['tokens_per_s'])} "
                     f"| {_fmt(x['tokens_per_s_per_rank'])} | {_fmt(x['scaling_efficiency'], '.2f')} | "
                     f"{_fmt(x['mfu'], '.3f')} |")
    lines += ["", f"grading: {r['grade_responses_per_s']:.0f} responses/s; weighing (grade, cluster, weights, "
                  f"examples): {r['weigh_seconds']:.2f} s; weight update: {r['weight_update_s']:.2f} s"
              + (f"; reference log-probs: {r['reference_s']:.2f} s" if "reference_s" in r else ""), ""]
    lines += ["Each phase against its limit (the first engine and rank counts):", "",
              "| phase | seconds | share | measured | limit | of limit | limit is |", "|---|---|---|---|---|---|---|"]
    for x in r["limits"]:
        unit = f" {x['unit']}" if x["unit"] else ""
        limit = "GPU only" if x["gpu_only"] else (_fmt(x["limit"], ".4g") + unit if x["limit"] else "-")
        value = _fmt(x["value"], ".4g") + unit if x["value"] is not None else "-"
        lines.append(f"| {x['phase']} | {x['seconds']:.2f} | {_fmt(x['share'] and 100 * x['share'], '.0f')}% | "
                     f"{value} | {limit} | {_fmt(x['of_limit'], '.2f')} | {x['against']} |")
    lines.append("")
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give counts of at least 1")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput of your own setup through the real pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for `east-ds run`")
    p.add_argument("--out", required=True, help="where bench.json, bench.md and the scratch outputs go")
    p.add_argument("--prompts", type=int, default=64, help="training questions to roll out")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps to train")
    p.add_argument("--engines", type=_counts, default=None, help="engine counts, e.g. 1,2 (default: the config's)")
    p.add_argument("--ranks", type=_counts, default=None, help="trainer rank counts, e.g. 1,2 (default: the config's)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s per GPU for MFU (default: looked "
                                                                   "up from the GPU type)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        r = bench(cfg, args.out, args.prompts, args.steps, args.engines, args.ranks, args.peak_tflops)
    except (ConfigError, TableError, FileNotFoundError, ValueError) as e:
        print(f"east-ds bench: error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(r))
    print(f"written: {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}")
    return 0
