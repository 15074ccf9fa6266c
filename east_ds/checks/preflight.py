"""`east-ds check CONFIG [key=value ...]`: what can be known about a run before it starts, in seconds, with every
problem listed at once (exit status 1 when there is any). No engine or trainer is built.

    config    the YAML and the overrides parse (unknown keys and wrong types name the key)
    model     config and tokenizer load; chat template or the plain fallback; the model's context length
              against rollout.max_model_len and training.max_len; parameter count (on the meta device)
    data      train and test present and readable, the share of rows whose gold answer parses, how many
              prompts would be skipped as too long for max_model_len - max_new_tokens
    training  the DeepSpeed config and the batch arithmetic (micro x accumulation x ranks = global)
    memory    each trainer rank's GPU memory (ZeRO stage, offload, ranks, dtype, micro-batch x max_len, a
              sleeping colocated engine) against the GPU's, with the settings that would fit
              (east_ds.checks.memory); the GPU's memory from torch.cuda, --gpu-memory-gib or
              EAST_DS_GPU_MEMORY_GIB, else not compared
    disk      free space under output_dir for one iteration: the policy checkpoint (parameters x dtype) plus
              the DeepSpeed checkpoint with its optimizer state while training
    cluster   (`check` only) Ray reachable, or a local one; the GPUs and CPUs the placement needs against what is
              free (tensor parallelism included); every node sees output_dir and a local model directory
              (east_ds.cluster.placement)

`east-ds run` runs the same checks except the cluster ones before it claims the run name (`check_before_run`),
so a mistyped path fails at once and the corrected command is not refused as "a different config".
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from east_ds.checks.memory import ModelShape, check_run, model_shape, module_param_counts
from east_ds.config import ConfigError, RunConfig, check_batch_sizes, load_config
from east_ds.data.prep import SPECS, parsable_rows

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
AREAS = ("config", "model", "data", "training", "memory", "disk", "cluster")


class PreflightError(ConfigError):
    """The run cannot start as configured; the message lists every problem found."""


@dataclass
class Report:
    """Problems (the run would fail) and notes (what was checked and found), per area."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    params: int | None = None  # the model's parameter count, once the model check has built it

    def problem(self, area: str, message: str) -> None:
        self.problems.append((area, message))

    def note(self, area: str, message: str) -> None:
        self.notes.append((area, message))

    def text(self) -> str:
        """One line per problem, then per note, grouped by area in AREAS order."""
        lines = []
        for area in AREAS:
            lines += [f"  {area:<9} PROBLEM  {m}" for a, m in self.problems if a == area]
            lines += [f"  {area:<9} ok       {m}" for a, m in self.notes if a == area]
        return "\n".join(lines)


@dataclass
class ModelFacts:
    """What the model check learned, for the data and disk checks."""

    tokenizer: object = None
    context: int | None = None  # the model's context length, None when its config does not say
    params: int | None = None  # parameter count
    shape: ModelShape | None = None  # what the GPU memory estimate needs (east_ds.checks.memory)


# ----------------------------------------------------------------------------------------------------------------
# The checks. Each records problems and notes and never raises for a problem it was written to find.


def check_model(cfg: RunConfig, report: Report) -> ModelFacts:
    facts = ModelFacts()
    from east_ds.data.load import check_model_path

    try:
        check_model_path(cfg.model.path)
    except FileNotFoundError as e:
        report.problem("model", f"model.path: {e}")
        return facts
    try:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError for unreadable configs
        report.problem("model", f"{cfg.model.path}: its config does not load ({type(e).__name__}: {e})")
        return facts
    from east_ds.rollout.engine_pool import model_max_len

    facts.context = model_max_len(cfg.model.path, cfg.model.trust_remote_code)
    if facts.context is None:
        report.note("model", "its config states no context length; rollout.max_model_len is trusted")
    else:
        for key, value in (("rollout.max_model_len", cfg.rollout.max_model_len),
                           ("training.max_len", cfg.training.max_len)):
            if value > facts.context:
                report.problem("model", f"{key}={value} exceeds the model's context length ({facts.context} "
                                        f"tokens); lower {key}")
    try:
        from transformers import AutoTokenizer

        facts.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path,
                                                        trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        report.problem("model", f"{cfg.model.path}: its tokenizer does not load ({type(e).__name__}: {e})")
    else:
        report.note("model", "chat template found" if getattr(facts.tokenizer, "chat_template", None)
                    else "no chat template: prompts use the plain fallback (data.FALLBACK_TEMPLATE)")
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # shapes only: no memory, no weights read
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=cfg.model.trust_remote_code)
        facts.params, largest = module_param_counts(model)
    except Exception as e:
        report.problem("model", f"{cfg.model.path}: not a causal LM transformers can build "
                                f"({type(e).__name__}: {e})")
    else:
        report.note("model", f"{cfg.model.path}: {facts.params / 1e6:,.1f}M parameters, context "
                             f"{facts.context or 'not stated'}")
        try:
            facts.shape = model_shape(hf_config, facts.params, largest)
        except ValueError as e:
            report.note("memory", f"not estimated: {e}")
    return facts


def _make_hint(source: str) -> str:
    """The `east-ds data` command that writes `source` when it is one of the shipped file names."""
    for name, spec in SPECS.items():
        if Path(source).name in {f for f, _ in spec.files}:
            return f"; `east-ds data {name} --out {Path(source).parent}` writes it"
    return ""


def check_data(cfg: RunConfig, facts: ModelFacts, report: Report) -> None:
    from east_ds.data.load import load_dataset, load_raw, render_prompt
    from east_ds.tables import TableError

    d = cfg.data
    budget = min(cfg.rollout.max_model_len, facts.context or cfg.rollout.max_model_len)
    sets = [("data.train", d.train, d.train_split, d.train_limit, cfg.rollout.max_new_tokens)]
    if d.test and cfg.evaluation.every_iteration:
        sets.append(("data.test", d.test, d.test_split, d.test_limit, cfg.evaluation.max_new_tokens))
    for key, source, split, limit, new_tokens in sets:
        if not source:
            report.problem("data", f"{key} is required (a local file or a hub dataset name)")
            continue
        try:
            raw, where = load_raw(source, split)
        except TableError as e:
            report.problem("data", f"{key}: {e}{_make_hint(source) if 'no such file' in str(e) else ''}")
            continue
        except Exception as e:  # the hub path: network and dataset errors of many types
            report.problem("data", f"{key}: {source!r} does not load ({type(e).__name__}: {e})")
            continue
        raw = raw.iloc[:limit] if limit is not None else raw
        ok = parsable_rows(raw, d.format)
        if len(ok) < len(raw):
            parsed = set(ok)
            first = next(i for i in range(len(raw)) if i not in parsed)
            report.problem("data", f"{key}: {where}: {len(raw) - len(ok)} of {len(raw)} rows have no parsable "
                                   f"{d.format} gold answer (first: row {first}); the run stops on them")
            continue
        try:
            questions = load_dataset(source, d.format, split, limit)
        except TableError as e:
            report.problem("data", f"{key}: {e}")
            continue
        line = f"{key}: {where}: {len(questions)} questions, gold parsed 100%"
        if facts.tokenizer is not None:
            texts = [render_prompt(facts.tokenizer, q, d.system_prompt) for q in questions["question"]]
            lengths = [len(ids) for ids in facts.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            too_long = sum(n + new_tokens > budget for n in lengths)
            line += (f", longest prompt {max(lengths)} tokens; {too_long} would be skipped as too long "
                     f"(prompt + {new_tokens} new tokens > {budget})")
            if too_long == len(lengths):
                report.problem("data", f"{key}: every prompt is too long: longest fit needs prompt + {new_tokens} "
                                       f"<= {budget}; raise rollout.max_model_len or lower max_new_tokens")
                continue
        report.note("data", line)


def check_training(cfg: RunConfig, report: Report) -> None:
    from east_ds.training.engine import build_ds_config

    t = cfg.training
    problems = []
    for fn, args in ((check_batch_sizes, (t, t.num_ranks)), (build_ds_config, (t, cfg.model, t.num_ranks))):
        try:
            fn(*args)
        except (ValueError, FileNotFoundError) as e:
            if str(e) not in problems:
                problems.append(str(e))
    for p in problems:
        report.problem("training", p)
    if not problems:
        report.note("training", f"{t.deepspeed_config}: {t.micro_batch_size} x {t.gradient_accumulation_steps} "
                                f"x {t.num_ranks} ranks = global batch {t.global_batch_size}")


def iteration_bytes(params: int, dtype: str, deepspeed_checkpoints: bool = True) -> dict[str, int]:
    """Disk one iteration writes at its peak: the policy checkpoint (Hugging Face export, model dtype) and, when
    training writes them (`training.save_every_steps` or `max_steps`), the DeepSpeed checkpoint (weights in the
    model dtype + AdamW state: two fp32 moments, plus fp32 master weights when the model dtype is 16-bit), which
    training.engine.fit removes once training has finished and exported."""
    weights = params * DTYPE_BYTES[dtype]
    optimizer = params * (8 + (4 if DTYPE_BYTES[dtype] == 2 else 0))
    deepspeed = weights + optimizer if deepspeed_checkpoints else 0
    return {"checkpoint": weights, "deepspeed": deepspeed, "total": weights + deepspeed}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_disk(cfg: RunConfig, facts: ModelFacts, report: Report) -> None:
    if facts.params is None:
        report.note("disk", "not checked: the parameter count is unknown until the model loads")
        return
    t = cfg.training
    need = iteration_bytes(facts.params, cfg.model.dtype, bool(t.save_every_steps or t.max_steps))
    where = Path(cfg.output_dir).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    parts = f"checkpoint {_size(need['checkpoint'])}" + (
        f" + DeepSpeed checkpoint with optimizer state {_size(need['deepspeed'])}" if need["deepspeed"] else "")
    msg = (f"one iteration needs about {_size(need['total'])} ({parts}), and each finished iteration keeps its "
           f"{_size(need['checkpoint'])} checkpoint; {_size(free)} free at {where}")
    if free < need["total"]:
        report.problem("disk", msg)
    else:
        report.note("disk", msg)


def check_memory(cfg: RunConfig, facts: ModelFacts, report: Report, gpu_memory_gib: float | None = None) -> None:
    """Each trainer rank's GPU memory against the GPU's (east_ds.checks.memory.check_run)."""
    if facts.shape is not None:
        kind, message = check_run(cfg, facts.shape, gpu_memory_gib)
        (report.problem if kind == "problem" else report.note)("memory", message)


def cheap_checks(cfg: RunConfig, report: Report | None = None, gpu_memory_gib: float | None = None) -> Report:
    """Every check but the cluster's, on a parsed config."""
    report = report or Report()
    facts = check_model(cfg, report)
    report.params = facts.params
    check_data(cfg, facts, report)
    check_training(cfg, report)
    check_memory(cfg, facts, report, gpu_memory_gib)
    check_disk(cfg, facts, report)
    return report


def check_cluster(cfg: RunConfig, report: Report) -> None:
    """Ray reachable (or a local one started), the placement's needs against the free resources, and every node
    seeing output_dir and the model directory (east_ds.cluster.placement)."""
    from east_ds.cluster import placement as cluster
    from east_ds.cluster.storage import storage_problems
    from east_ds.cluster.ray_utils import cluster_gpus, init_ray

    try:
        init_ray(cfg.placement.ray_address)
    except Exception as e:  # ConnectionError, RuntimeError, ... from ray.init
        report.problem("cluster", f"Ray at {cfg.placement.ray_address or 'a new local instance'} is not reachable "
                                  f"({type(e).__name__}: {e})")
        return
    free = cluster.free_resources()
    try:
        needs = cluster.placement_needs(cfg.rollout, cfg.training, cfg.placement, cluster_gpus())
    except ConfigError as e:  # e.g. more colocated trainer ranks than engine GPUs to share
        report.problem("cluster", str(e))
        needs = []
    short = cluster.shortfall(needs, free)
    for p in short:
        report.problem("cluster", p)
    if needs and not short:
        asked = "; ".join(f"{n.what} {cluster.fmt_resources(n.total())}" for n in needs)
        report.note("cluster", f"needs {asked}; free {cluster.fmt_resources(free)}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, unseen in storage_problems(out, cfg.model.path).items():  # engines and ranks read the model
        for p in unseen:
            report.problem("cluster", p)
        if not unseen:
            report.note("cluster", f"every node sees {path.resolve()}")


def check_before_run(cfg: RunConfig) -> Report:
    """The cheap checks `east-ds run` makes before claiming the run name; PreflightError lists every problem."""
    report = cheap_checks(cfg)
    if report.problems:
        lines = "\n".join(f"  {a}: {m}" for a, m in report.problems)
        raise PreflightError(f"{len(report.problems)} problem(s) before the run could start "
                             f"(`east-ds check` lists them too):\n{lines}")
    return report


# ----------------------------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="preflight a run config: every problem at once, in seconds",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for `east-ds run`")
    p.add_argument("--no-cluster", action="store_true", help="skip the cluster checks (no Ray)")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="the training GPUs' memory in GiB for the "
                   "memory check (else EAST_DS_GPU_MEMORY_GIB, else the smallest GPU torch.cuda sees here)")
    p.add_argument("--smoke", action="store_true", help="instead of the checks, run each GPU path once on tiny "
                   "models (east_ds/checks/smoke.py): one row per path, passed / FAILED / skipped")
    p.add_argument("--logical-gpus", type=int, default=None, help="with --smoke on a machine without GPUs: start a "
                   "local Ray advertising this many logical GPUs (the paths then run on the CPU)")
    p.set_defaults(func=main)


def smoke_main(args: argparse.Namespace) -> int:
    """`east-ds check CONFIG --smoke`: the GPU paths, one row each; exit 1 when one fails."""
    import tempfile

    from east_ds.checks.smoke import format_row, run_smoke

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"east-ds check --smoke: error: {e}", file=sys.stderr)
        return 2
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"east-ds check {args.config} --smoke: GPU paths on tiny models")
    with tempfile.TemporaryDirectory(prefix="smoke_", dir=cfg.output_dir) as work:  # shared storage: all nodes
        rows = run_smoke(cfg, Path(work), args.logical_gpus, report=lambda r: print(format_row(r), flush=True))
    failed = [r.path for r in rows if r.status == "FAILED"]
    print(f"{len(rows) - len(failed)} of {len(rows)} paths passed or skipped, {len(failed)} failed, "
          f"in {time.perf_counter() - t0:.0f} s" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        return smoke_main(args)
    t0 = time.perf_counter()
    report = Report()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        report.problem("config", str(e))
        cfg = None
    if cfg is not None:
        report.note("config", f"{args.config}: run {cfg.run_dir}, {cfg.iterations} iteration(s), "
                              f"{cfg.training.loss}, a = {cfg.weighting.a}")
        cheap_checks(cfg, report, args.gpu_memory_gib)
        if not args.no_cluster:
            check_cluster(cfg, report)
    print(f"east-ds check {args.config}")
    print(report.text())
    n = len(report.problems)
    print(f"{n} problem(s) found in {time.perf_counter() - t0:.1f} s" if n else
          f"no problems found in {time.perf_counter() - t0:.1f} s")
    return 1 if n else 0
