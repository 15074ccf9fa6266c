"""Run configuration: one small frozen dataclass per component, parsed at the edge.

A run config is YAML with one section per component (model, data, rollout, weighting, training, evaluation,
placement) plus a few run-level keys. `key=value` overrides use dotted paths (`training.lr=1e-6`). Unknown keys and
values of the wrong type are errors that name the key. Components receive their own section, never the whole run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config key that does not exist, or a value of the wrong type; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # hub name or local directory of a Hugging Face causal LM (the starting policy)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # weights dtype for training and generation
    trust_remote_code: bool = False  # passed to transformers and vLLM


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # local JSONL/Parquet file, or a hub dataset name
    test: str = ""  # same, for evaluation; empty skips evaluation
    format: Literal["gsm8k", "math"] = "gsm8k"  # how the gold answer is read from a row
    train_split: str = "train"  # split name when `train` is a hub dataset
    test_split: str = "test"  # split name when `test` is a hub dataset
    train_limit: int | None = None  # use only the first k training questions
    test_limit: int | None = None  # use only the first k test questions
    system_prompt: str = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 16  # samples per question
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0  # engine i uses seed + i, so engines never return identical samples
    num_engines: int = 1  # data-parallel vLLM engines (Ray actors)
    tensor_parallel_size: int = 1  # GPUs per engine
    gpu_memory_utilization: float | None = None  # fraction of each GPU vLLM may take (GPU machines only); null:
    # 0.92 in split placement (the engine owns its GPU), 0.5 colocated (device_plan.rollout_defaults)
    max_model_len: int = 2048  # prompt + response tokens; longer prompts are recorded as skipped
    enforce_eager: bool | None = None  # true: no CUDA graphs (faster start); null: CUDA graphs on GPUs, eager on CPU
    seed_per_request: bool | None = None  # true: each question's samples have their own seed, so they do not depend
    # on the engine or batch (reproducible); it costs throughput (vLLM samples seeded requests one at a time;
    # benchmarks/RESULTS.md). null: true on CPU engines, false on GPU engines
    shard_size: int = 64  # prompts per rollout shard written to disk (the unit of resume and retry)
    feed: Literal["continuous", "shard"] = "continuous"  # how shards reach an engine: "continuous" adds the next
    # shards to its running batch while the stragglers of earlier ones decode, so the batch stays full until the
    # last shard; "shard" runs one blocking generate per shard (the batch drains at the end of every shard)
    max_num_seqs: int | None = None  # sequences an engine decodes per step (vLLM's max_num_seqs); null: vLLM's
    # default for the device. The pool keeps at least two steps' worth of samples queued on each engine
    enable_prefix_caching: bool = True  # vLLM reuses KV of shared prompt prefixes; reset after each weight update
    enable_sleep: bool = False  # GPU only: build engines with sleep mode so sleep()/wake() free GPU memory
    max_shard_retries: int = 2  # a shard whose engine actor dies is retried this many times on a new actor
    weight_bucket_mb: int = 256  # in-memory / broadcast weight updates move tensors in buckets of at most this size
    weight_sync: Literal["path", "object_store", "broadcast"] = "path"  # how new weights reach the engines after
    # training: "path" engines load the checkpoint from shared storage; "object_store" the driver sends its
    # tensors in buckets through Ray's object store; "broadcast" trainer rank 0 broadcasts them (NCCL between
    # GPUs, a CPU stand-in without CUDA; split placement only). docs/rollout.md says which to use when


@dataclass(frozen=True)
class WeightingConfig:
    a: float = 1.0  # exponent of the mapping function f(h; a) = h^a N / sum_j h_j^a; 0 is vanilla self-training
    value: Literal["entropy", "accuracy", "rejected", "perplexity", "learnability", "band"] = "entropy"  # v of f
    cluster_by: Literal["equivalent", "exact"] = "equivalent"  # how answers are grouped into clusters
    sft_examples: Literal["one", "all"] = "one"  # one random correct response, or all distinct correct ones
    seed: int = 0  # example selection is deterministic under this seed
    cap_at_most_correct: int | None = None  # DEPARTURE from the paper, off by default (null). k: a question with at
    # most k correct samples of n keeps its weight at or below 1 (min(f, 1)); the others keep EAST's weights, so
    # the mean weight falls below 1. Tests the diagnosis that entropy sends weight to questions the model only
    # guesses at (benchmarks/STUDY.md, arm east_a1_cap2)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (peft) for the policy: the base weights stay frozen and only low-rank adapters train; each checkpoint
    is the adapter, and weight sync moves only the adapter's tensors. Off while r is 0 (`training.lora.r=8` turns
    it on)."""

    r: int = 0  # adapter rank; 0: full fine-tuning (no LoRA)
    alpha: float = 16.0  # scaling alpha / r (peft's lora_alpha)
    dropout: float = 0.0  # dropout on the adapter's input (peft's lora_dropout)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj")  # every linear layer of a Llama/Qwen decoder layer

    @property
    def enabled(self) -> bool:
        return self.r > 0


@dataclass(frozen=True)
class TrainConfig:
    loss: Literal["sft", "dpo", "kto"] = "sft"
    lr: float = 2e-6
    epochs: int = 3
    global_batch_size: int = 16  # examples per optimizer step, over all ranks and accumulation steps
    micro_batch_size: int = 2  # examples per rank per forward/backward
    gradient_accumulation_steps: int = 8  # must satisfy micro x accumulation x world = global
    num_ranks: int = 1  # data-parallel training ranks (Ray actors or deepspeed processes)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    max_len: int = 1024  # prompt + response tokens; longer examples are truncated from the right and counted
    max_prompt_len: int = 512  # DPO/KTO prompt budget
    beta: float = 0.01  # DPO / KTO temperature
    kto_desirable_weight: float = 1.0  # KTO lambda_D
    kto_undesirable_weight: float = 1.0  # KTO lambda_U
    deepspeed_config: str = "ds_configs/zero2.json"  # ZeRO policy only; batch sizes come from this TrainConfig,
    # precision from ModelConfig.dtype; a relative path is looked up from the cwd, then the east_ds repo root
    gradient_checkpointing: bool = True
    group_by_length: bool = True  # length-grouped batches waste less on padding
    save_every_steps: int = 0  # DeepSpeed checkpoint every k optimizer steps, removed once training finishes
    # (0: none, unless max_steps stops a call early)
    seed: int = 0
    max_steps: int = 0  # stop this call after k optimizer steps in total (0: all epochs); the schedule spans all epochs
    length_group_size: int = 16  # length grouping sorts within windows of this many global batches
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters instead of full fine-tuning


def check_batch_sizes(cfg: TrainConfig, world_size: int) -> None:
    """micro_batch_size x gradient_accumulation_steps x world size must equal global_batch_size: an error naming
    the numbers, never a silent fix (the batch fields of the DeepSpeed config are generated from these)."""
    m, g, B = cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.global_batch_size
    if m * g * world_size != B:
        raise ValueError(f"micro_batch_size ({m}) x gradient_accumulation_steps ({g}) x world size ({world_size}) "
                         f"= {m * g * world_size} != global_batch_size ({B})")


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 1024  # greedy decoding, one sample
    every_iteration: bool = True  # evaluate after each iteration (and once on the starting model)


@dataclass(frozen=True)
class PlacementConfig:
    mode: Literal["colocated", "split"] = "colocated"  # engines and trainer share GPUs, or have their own
    ray_address: str = ""  # empty: start or join a local Ray; "auto": join the running cluster
    schedule_timeout_s: float = 300.0  # a placement group or actor not scheduled within this many seconds fails
    # the run with what was asked and what the cluster has free (never a silent wait)
    wait_for_resources: bool = False  # false: a run needing more than the whole cluster has fails at once;
    # true: wait up to schedule_timeout_s for it to grow (an autoscaling cluster)
    # Custom Ray resources each engine actor / each trainer rank asks for, on top of CPUs and GPUs: nodes started
    # with `ray start --resources '{"rollout_node": 8}'` take the engines when engine_resources is
    # {rollout_node: 1}. Empty: anywhere the CPUs/GPUs fit. Colocated ranks on GPUs sit on the engines' bundles
    # and ignore trainer_resources.
    engine_resources: dict[str, float] = field(default_factory=dict)
    trainer_resources: dict[str, float] = field(default_factory=dict)
    offload_cpus_per_rank: int | None = None  # CPUs (and threads) of each trainer rank whose DeepSpeed config
    # offloads the optimizer (ds_configs/*_offload.json: CPUAdam steps on the CPU); null: each GPU's share of its
    # node's CPUs less one (device_plan.trainer_rank_cpus); ranks that do not offload take one CPU


@dataclass(frozen=True)
class LoggingConfig:
    """Where the driver's per-iteration metrics go besides the run directory's metrics.jsonl (always written)."""

    tensorboard: bool | None = None  # event files in <run>/tensorboard; null: when tensorboard is installed
    wandb: bool = False  # Weights & Biases (pip install -e '.[wandb]'); files under <run>/wandb
    wandb_project: str = "east_ds"  # W&B project
    wandb_entity: str = ""  # W&B team or user; empty: the logged-in account's default
    wandb_mode: Literal["auto", "online", "offline"] = "auto"  # auto: online when credentials are found
    # (WANDB_API_KEY or `wandb login`), else offline (sync later with `wandb sync <run>/wandb/offline-run-*`)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"  # the run directory is output_dir/name
    iterations: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ----------------------------------------------------------------------------------------------------------------
# Parsing: dict -> dataclass with type checks, YAML files, key=value overrides.


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_check(k, kt, f"{key} key"): _check(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string; accept it as the number it is
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key {where!r}; known keys here: {sorted(names)}")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (tuples as lists), suitable for YAML/JSON."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict; values are parsed as YAML scalars (1e-6, true, [1,2])."""
    import yaml

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        path, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = RunConfig) -> Any:
    """Read a YAML config (or none), apply overrides, and build `cls`. Errors name the file and the key."""
    import yaml

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
