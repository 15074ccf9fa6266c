"""GPU memory of one trainer rank, estimated before a run starts (`east-ds check`, `east-ds run`'s preflight).

A run that cannot fit should fail in seconds with the settings that would fit, not at its first training step
after the rollout (Llama-3.1-8B on one ZeRO-3 rank without offload needs about 147 GiB). Per rank the estimate
adds, in bytes:

    model states    16-bit weights, gradients, fp32 master weights and Adam moments for the ZeRO stage, the
                    offload and the number of ranks: DeepSpeed's own estimators for ZeRO-2 and ZeRO-3
                    (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`, which take
                    parameter counts, so no model is loaded); ZeRO-0/1 and float32, which they do not cover, by
                    the same accounting from the optimizers DeepSpeed 0.19 builds (`model_states`)
    optimizer step  ZeRO-3 without optimizer offload flattens one sub-group's gradients to fp32 for the step
    buckets         DeepSpeed's reduce and gather buckets (the JSON's sizes, or DeepSpeed's defaults)
    activations     micro-batch x training.max_len tokens through the layers, with gradient checkpointing on or
                    off, and the logits with their gradient (`activation_bytes`)
    runtime         CUDA context and NCCL buffers of the rank's process (an allowance)
    sleeping vLLM   colocated placement only: what a sleeping engine keeps on the GPU the rank shares

The check compares the sum with the GPU's memory (torch.cuda on this machine, else a figure given with
`--gpu-memory-gib` or EAST_DS_GPU_MEMORY_GIB) and lists settings that fit (`fitting_settings`). Pure arithmetic
apart from the DeepSpeed estimator call; DeepSpeed is imported only inside the functions that call it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from east_ds.schema import loss_spec

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_MEMORY_ENV = "EAST_DS_GPU_MEMORY_GIB"  # the training GPUs' memory in GiB, where this machine has no CUDA

# What a colocated engine keeps on its GPU while asleep (east_ds sleeps at level 2, device_plan.sleep_plan; level 1
# keeps the weights in host memory, so the GPU keeps the same). vLLM's own test of level-2 sleep
# (tests/basic_correctness/test_cumem.py::test_deep_sleep, vLLM 0.32) asserts that the engine then holds under
# 3 GiB of GPU memory: its process's CUDA context and the buffers allocated outside the sleep allocator's pools.
VLLM_SLEEP_RESIDUE_BYTES = 3 * GiB
# The trainer rank's own CUDA context (about 0.3-0.6 GiB under CUDA 12's lazy module loading) and NCCL's
# communicator buffers (NCCL_BUFFSIZE, 4 MiB per channel and peer): an allowance, not a measurement.
TRAINER_RUNTIME_BYTES = 1 * GiB
# Share of the GPU's memory the estimate must leave free: the caching allocator's fragmentation and transient
# copies not listed here (a judgement, not a measurement).
HEADROOM = 0.05

# Activations one Llama-style decoder layer (transformers 5.19, SDPA attention) saves for backward, per token, for
# a model dtype of e bytes: its two RMSNorms' float32 inputs (2 x 4 x hidden) + e x (6 x hidden (norm outputs,
# q, RoPE, attention output) + 2 x kv_dim (k, v) + 4 x intermediate (gate, up, SiLU, their product)). Measured with
# torch.autograd.graph.saved_tensors_hooks on Llama layers; tests/test_memory_check.py measures it again on the
# installed transformers. With gradient checkpointing a layer keeps only its input (e x hidden).


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, from its config and a meta-device build (no weights read)."""

    params: int  # parameters, tied ones once
    largest_layer: int  # parameters of the largest module's own tensors (ZeRO-3 gathers one at a time)
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int  # key/value heads x head dimension
    vocab: int
    q_dim: int = 0  # attention heads x head dimension (0: hidden)


def module_param_counts(model: Any) -> tuple[int, int]:
    """(parameters, largest module's own parameters) of a torch module, tied parameters once: DeepSpeed's
    `model_to_params` (stage3.py), which dedupes by data_ptr and so cannot run on a meta-device model."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def model_shape(hf_config: Any, params: int, largest_layer: int) -> ModelShape:
    """A ModelShape from a transformers config; ValueError naming the missing field when it is not a decoder
    whose activations `activation_bytes` can estimate."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")
               if getattr(text, k, None) is None]
    if missing:
        raise ValueError(f"the model's config has no {', '.join(missing)}")
    hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    return ModelShape(params=params, largest_layer=largest_layer, hidden=hidden,
                      layers=int(text.num_hidden_layers), intermediate=int(getattr(text, "intermediate_size",
                                                                                      None) or 4 * hidden),
                      kv_dim=kv_heads * head_dim, vocab=int(text.vocab_size), q_dim=heads * head_dim)


@dataclass(frozen=True)
class TrainSetup:
    """The training settings the estimate depends on (from RunConfig and the DeepSpeed JSON)."""

    zero: Mapping[str, Any]  # the JSON's zero_optimization section
    ranks: int
    dtype: str  # model.dtype
    sequences: int  # sequences per forward/backward: the micro-batch (DPO: chosen and rejected, twice it)
    max_len: int
    checkpointing: bool
    colocated: bool  # a sleeping vLLM engine shares each rank's GPU
    micro_batch: int  # training.micro_batch_size, for the suggestions
    global_batch: int
    lora_params: int = 0  # training.lora: the adapter's (trainable) parameters; 0: full fine-tuning

    @property
    def stage(self) -> int:
        return int(self.zero.get("stage", 0))

    @property
    def offload_optimizer(self) -> bool:
        return _offloaded(self.zero.get("offload_optimizer"))

    @property
    def offload_params(self) -> bool:
        return _offloaded(self.zero.get("offload_param"))


def _offloaded(section: Any) -> bool:
    return isinstance(section, Mapping) and section.get("device", "none") not in ("none", None)


def train_setup(cfg: Any, ds_config: Mapping[str, Any]) -> TrainSetup:
    """TrainSetup of a RunConfig and its built DeepSpeed config (training.engine.build_ds_config)."""
    t = cfg.training
    return TrainSetup(zero=dict(ds_config.get("zero_optimization", {"stage": 0})), ranks=t.num_ranks,
                      dtype=cfg.model.dtype,
                      sequences=t.micro_batch_size * loss_spec(t.loss).sequences_with_grad,
                      max_len=t.max_len, checkpointing=t.gradient_checkpointing,
                      colocated=cfg.placement.mode == "colocated", micro_batch=t.micro_batch_size,
                      global_batch=t.global_batch_size)


# ----------------------------------------------------------------------------------------------------------------
# The parts


def lora_params(shape: ModelShape, r: int, target_modules: Iterable[str]) -> int:
    """Parameters of a LoRA adapter of rank r on the Llama-style linear layers named in `target_modules` (peft:
    r x (in + out) per adapted matrix, in every layer); names that are not a Llama projection add nothing."""
    q = shape.q_dim or shape.hidden
    dims = {"q_proj": (shape.hidden, q), "k_proj": (shape.hidden, shape.kv_dim), "v_proj": (shape.hidden, shape.kv_dim),
            "o_proj": (q, shape.hidden), "gate_proj": (shape.hidden, shape.intermediate),
            "up_proj": (shape.hidden, shape.intermediate), "down_proj": (shape.intermediate, shape.hidden)}
    return shape.layers * sum(r * sum(dims[m]) for m in set(target_modules) if m in dims)


def lora_states(shape: ModelShape, setup: TrainSetup) -> tuple[int, int, str]:
    """(GPU bytes per rank, host bytes, source) of a LoRA run's model states: the frozen base in the model dtype,
    whole on every rank (ZeRO-3: its partition plus the largest layer gathered, twice), and the adapter's
    16-bit weights, fp32 gradients, master weights and Adam moments, (e + 16) bytes per trainable parameter,
    counted unsharded (at most megabytes too many: an adapter is a fraction of a percent of the model). Nothing
    frozen has gradients or optimizer state."""
    p, n, e, t = shape.params, setup.ranks, DTYPE_BYTES[setup.dtype], setup.lora_params
    base = e * (math.ceil(p / n) + 2 * shape.largest_layer) if setup.stage == 3 else e * p
    return base + (e + 16) * t, 0, "LoRA accounting (frozen base, trainable adapter)"


def model_states(shape: ModelShape, setup: TrainSetup) -> tuple[int, int, str]:
    """(GPU bytes per rank, host bytes per node, source) of weights, gradients, master weights and Adam moments.

    ZeRO-2/3 in 16-bit: DeepSpeed's estimators, which assume 16-bit weights with fp32 master weights, fp32
    gradients and two fp32 Adam moments. ZeRO-3's 18 bytes per parameter and rank are what stage3.py allocates
    with east_ds's precision (device_plan.precision_sections sets grad_accum_dtype fp32 for bf16): the 16-bit
    partition 2 + the fp32 gradient partition 4 (grad_partitions_flat_buffer, in grad_accum_dtype) + master 4 +
    moments 8; ZeRO-2's 2 + 18/N counts the fp32 gradient partition (its compact fp32 buffer) too. float32
    models: the estimators' 16-bit copies are 4 bytes (weights, ZeRO-2's gradient partition, the gathered layer).
    The host figure is the estimators' (additional_buffer_factor 1.5), all ranks on one node."""
    if setup.lora_params:
        return lora_states(shape, setup)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, n, e = shape.params, setup.ranks, DTYPE_BYTES[setup.dtype]
    widen = e - 2  # extra bytes of a float32 copy over the 16-bit one the estimators count
    if setup.stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            p, shape.largest_layer, num_gpus_per_node=n, num_nodes=1, cpu_offload=setup.offload_optimizer,
            cpu_offload_params=setup.offload_params, zero_init=True)
        gpu += widen * (2 * shape.largest_layer + (0 if setup.offload_params else math.ceil(p / n)))
        return int(gpu), int(cpu), "DeepSpeed's ZeRO-3 estimator"
    if setup.stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=n, num_nodes=1,
                                                         cpu_offload=setup.offload_optimizer)
        gpu += widen * (p + (0 if setup.offload_optimizer else math.ceil(p / n)))
        return int(gpu), int(cpu), "DeepSpeed's ZeRO-2 estimator"
    return _unsharded_states(p, n, e, setup), 0, f"ZeRO-{setup.stage} accounting"


def _unsharded_states(p: int, n: int, e: int, setup: TrainSetup) -> int:
    """ZeRO-0/1, which DeepSpeed has no estimator for, from the optimizers DeepSpeed 0.19 builds (engine.py
    `_do_optimizer_sanity_check`):
    ZeRO-0 16-bit: FP16_Optimizer (bf16 too): weights and gradients e, fp32 master 4, fp32 gradients 4 at the
      step, moments 8, every rank; float32: torch's AdamW on the weights, 4 + 4 + 8.
    ZeRO-1 bf16 with fp32 accumulation: BF16_Optimizer: weights and gradients 2 + 2, fp32 gradients 4
      (fp32_groups_gradients_flat, the whole model on every rank), master and moments 12 / N. Other dtypes:
      DeepSpeedZeroOptimizer without partitioned gradients: e + e, fp32 gradient partition (16-bit only), master
      and moments 12 / N. An offloaded optimizer leaves weights and gradients only."""
    if setup.stage == 0:
        return p * (e + e + 8 + (8 if e == 2 else 0))
    replicated = e + e + (4 if setup.dtype == "bfloat16" else 0)
    if setup.offload_optimizer:
        return p * (e + e)
    sharded = 12 + (4 if setup.dtype == "float16" else 0)
    return p * replicated + math.ceil(p * sharded / n)


def zero_buffers(shape: ModelShape, setup: TrainSetup) -> tuple[int, int]:
    """(bucket bytes, optimizer-step bytes) per rank. Buckets: ZeRO-1/2 reduce + all-gather buckets, ZeRO-3
    reduce + prefetch buckets, in the model dtype (sizes from the JSON, else DeepSpeed's defaults). Step: ZeRO-3
    without optimizer offload flattens one sub-group's gradient partition to fp32 before the step
    (stage3.py `_prepare_fp32_grad_for_sub_group`): min(sub_group_size, parameters / ranks) x 4."""
    if setup.stage == 0:
        return 0, 0
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    z = DeepSpeedZeroConfig(**setup.zero)
    e = DTYPE_BYTES[setup.dtype]
    trained = setup.lora_params or shape.params  # buckets and the step's flatten hold trainable parameters only
    if setup.stage == 3:
        step = 0 if setup.offload_optimizer else 4 * min(int(z.sub_group_size), math.ceil(trained / setup.ranks))
        return e * (min(int(z.reduce_bucket_size), trained) + int(z.prefetch_bucket_size)), step
    return e * (min(int(z.reduce_bucket_size), trained) + min(int(z.allgather_bucket_size), trained)), 0


def layer_activation_bytes(shape: ModelShape, dtype: str) -> int:
    """Bytes one decoder layer saves for backward per token, without gradient checkpointing (see above)."""
    e = DTYPE_BYTES[dtype]
    return 8 * shape.hidden + e * (6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate)


def activation_bytes(shape: ModelShape, dtype: str, sequences: int, max_len: int, checkpointing: bool) -> int:
    """Peak activation bytes of one forward/backward of `sequences` x `max_len` tokens.

    Layers: with checkpointing every layer keeps its input, and the backward recomputes one layer at a time (its
    saved tensors plus their gradients, counted as two layers); without, every layer keeps its saved tensors and
    the backward adds one layer's gradients. Head: the final norm's inputs ((4 + 2e) x hidden: float32 and model
    dtype), the logits the loss keeps in the model dtype and their gradient of the same size
    (training.losses._TargetLogps), and its float32 chunks (LOGP_CHUNK_ELEMENTS, forward and backward)."""
    from east_ds.training.losses import LOGP_CHUNK_ELEMENTS

    e = DTYPE_BYTES[dtype]
    layer = layer_activation_bytes(shape, dtype)
    kept = shape.layers * e * shape.hidden + 2 * layer if checkpointing else (shape.layers + 1) * layer
    head = (4 + 2 * e) * shape.hidden + 2 * e * shape.vocab
    return sequences * max_len * (kept + head) + 2 * 4 * LOGP_CHUNK_ELEMENTS


# ----------------------------------------------------------------------------------------------------------------
# The estimate, the GPU's memory, and what would fit


@dataclass(frozen=True)
class MemoryEstimate:
    parts: tuple[tuple[str, int], ...]  # (what, bytes) on one trainer rank's GPU
    host_bytes: int  # host memory per node for offloaded model states (DeepSpeed's estimators; 0 without)
    states_source: str  # which estimator gave the model states

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def breakdown(self) -> str:
        return ", ".join(f"{what} {b / GiB:.1f}" for what, b in self.parts if b)


def estimate_rank_memory(shape: ModelShape, setup: TrainSetup) -> MemoryEstimate:
    """GPU bytes one trainer rank needs at its peak, part by part (see the module docstring)."""
    states, host, source = model_states(shape, setup)
    buckets, step = zero_buffers(shape, setup)
    acts = activation_bytes(shape, setup.dtype, setup.sequences, setup.max_len, setup.checkpointing)
    parts = (("model states", states), ("optimizer step", step), ("buckets", buckets), ("activations", acts),
             ("CUDA context and NCCL", TRAINER_RUNTIME_BYTES),
             ("sleeping vLLM engine", VLLM_SLEEP_RESIDUE_BYTES if setup.colocated else 0))
    return MemoryEstimate(parts, host, source)


def gpu_memory(given_gib: float | None = None, env: Mapping[str, str] = os.environ) -> tuple[int | None, str]:
    """(bytes, where the figure came from) of the training GPUs: a figure given (`--gpu-memory-gib`, then
    EAST_DS_GPU_MEMORY_GIB), else the smallest GPU torch.cuda sees here, else (None, why). ValueError names a
    figure that is not a positive number. Only device properties are read: no tensor is made on the GPU."""
    for value, name in ((given_gib, "--gpu-memory-gib"), (env.get(GPU_MEMORY_ENV), GPU_MEMORY_ENV)):
        if value is None or value == "":
            continue
        try:
            gib = float(value)
        except ValueError:
            gib = float("nan")
        if not gib > 0:
            raise ValueError(f"{name}={value!r}: give the training GPUs' memory in GiB, a positive number")
        return int(gib * GiB), f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device on this machine"
    props = min((torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())),
                key=lambda p: p.total_memory)
    return int(props.total_memory), f"{props.name}, torch.cuda"


def describe(setup: TrainSetup) -> str:
    """The settings the estimate used, in words."""
    offload = " + ".join(w for w, on in (("optimizer", setup.offload_optimizer),
                                         ("parameters", setup.offload_params)) if on)
    return (f"{setup.ranks} rank(s), ZeRO-{setup.stage}{f' offloading {offload} to the CPU' if offload else ''}, "
            f"{setup.dtype}, {setup.sequences} x {setup.max_len} tokens per micro-batch, gradient checkpointing "
            f"{'on' if setup.checkpointing else 'off'}"
            f"{', colocated with a sleeping vLLM engine' if setup.colocated else ''}"
            f"{f', LoRA ({setup.lora_params:,} trainable parameters)' if setup.lora_params else ''}")


def _candidates(setup: TrainSetup, choices: Mapping[str, Mapping[str, Any]],
                max_ranks: int) -> Iterable[tuple[dict[str, str], TrainSetup]]:
    """Changed settings to try (overrides, setup), each keeping micro x accumulation x ranks = global batch."""
    def batch(micro: int, ranks: int) -> dict[str, str] | None:
        accum, rest = divmod(setup.global_batch, micro * ranks)
        return None if rest or not accum else {"training.gradient_accumulation_steps": str(accum)}

    if not setup.checkpointing:
        yield {"training.gradient_checkpointing": "true"}, replace(setup, checkpointing=True)
    per = setup.sequences // setup.micro_batch
    for micro in range(setup.micro_batch - 1, 0, -1):
        if (b := batch(micro, setup.ranks)) is not None:
            yield ({"training.micro_batch_size": str(micro), **b},
                   replace(setup, micro_batch=micro, sequences=micro * per))
    for name, zero in choices.items():
        same = dict(zero) == dict(setup.zero)
        if not same and int(zero.get("stage", 0)) < 2:
            continue  # ZeRO-0/1 never need less than ZeRO-2 on as many ranks
        for ranks in range(setup.ranks + (1 if same else 0), max_ranks + 1):
            if (b := batch(setup.micro_batch, ranks)) is None:
                continue
            over = {} if same else {"training.deepspeed_config": name}
            if ranks != setup.ranks:
                over.update({"training.num_ranks": str(ranks), **b})
            yield over, replace(setup, zero=dict(zero), ranks=ranks)


def fitting_settings(shape: ModelShape, setup: TrainSetup, gpu_bytes: int, current: str,
                     choices: Mapping[str, Mapping[str, Any]], max_ranks: int,
                     limit: int = 4) -> list[tuple[str, MemoryEstimate]]:
    """Up to `limit` settings that fit in `gpu_bytes` per rank, as `key=value ...` overrides with their estimate:
    for each DeepSpeed JSON in `choices` (name -> zero_optimization; `current` is the config's own) the fewest
    ranks, up to `max_ranks`, that fit; a smaller micro-batch; gradient checkpointing. Settings without offload
    come first, then those with fewer ranks, then those changing fewer keys."""
    best: dict[str, tuple[tuple[bool, int, int], str, MemoryEstimate]] = {}
    for over, cand in _candidates(setup, choices, max_ranks):
        est = estimate_rank_memory(shape, cand)
        if est.total > gpu_bytes:
            continue
        key = " ".join(f"{k}={v}" for k, v in over.items())
        order = (cand.offload_optimizer or cand.offload_params, cand.ranks, len(over))
        placement = "training.num_ranks" in over or "training.deepspeed_config" in over
        group = over.get("training.deepspeed_config", current) if placement else key  # one line per JSON
        if group not in best or order < best[group][0]:
            best[group] = (order, key, est)
    return [(key, est) for _, key, est in sorted(best.values(), key=lambda v: v[0])][:limit]


def usable(gpu_bytes: int) -> int:
    """The part of a GPU's memory the estimate may fill (HEADROOM kept free)."""
    return int(gpu_bytes * (1 - HEADROOM))


def memory_verdict(shape: ModelShape, setup: TrainSetup, gpu_bytes: int | None, source: str, current: str,
                   choices: Mapping[str, Mapping[str, Any]], max_ranks: int) -> tuple[bool, str]:
    """(fits, message) for the preflight report: the per-rank need and the GPU's memory first, then the settings
    and the parts; when it does not fit, the settings that would. Without a GPU figure: fits (nothing to
    compare), saying how to give one."""
    est = estimate_rank_memory(shape, setup)
    need = f"each trainer rank needs about {est.total / GiB:.1f} GiB of GPU memory"
    parts = f"{describe(setup)} (GiB: {est.breakdown()}; model states by {est.states_source})"
    if setup.offload_optimizer or setup.offload_params:
        parts += f"; the offloaded states take about {est.host_bytes / GiB:.0f} GiB of host memory per node"
    if gpu_bytes is None:
        return True, (f"{need}: {parts}; not compared: {source}; give the training GPUs' memory with "
                      f"--gpu-memory-gib N or {GPU_MEMORY_ENV}=N")
    have = (f"the GPU has {gpu_bytes / GiB:.1f} GiB ({source}; {HEADROOM:.0%} of it kept free for "
            f"fragmentation)")
    if est.total <= usable(gpu_bytes):
        return True, f"{need}, {have}: {parts}{lora_comparison(shape, setup, gpu_bytes)}"
    fits = fitting_settings(shape, setup, usable(gpu_bytes), current, choices, max_ranks)
    ways = "; ".join(f"{key} ({e.total / GiB:.1f} GiB per rank"
                     + (f", {e.host_bytes / GiB:.0f} GiB of host memory per node"
                        if "offload" in key else "") + ")" for key, e in fits)
    advice = (f"settings that fit: {ways}" if fits else
              f"no shipped DeepSpeed config fits with up to {max_ranks} ranks and micro-batch 1: use GPUs with "
              f"more memory or a smaller model")
    return False, f"{need}, more than {have}: {parts}. {advice[0].upper()}{advice[1:]}" \
        f"{lora_comparison(shape, setup, gpu_bytes)}"


LORA_SUGGESTED_RANK = 16


def lora_comparison(shape: ModelShape, setup: TrainSetup, gpu_bytes: int) -> str:
    """A sentence for the verdict when LoRA decides whether the run fits: a LoRA run that fits where full
    fine-tuning would not says so; a full fine-tuning run that does not fit where LoRA (rank 16 on every linear
    layer, training.lora's default targets) would, says that. '' otherwise."""
    from east_ds.config import LoraConfig

    if setup.lora_params:
        full = estimate_rank_memory(shape, replace(setup, lora_params=0)).total
        if full > usable(gpu_bytes) >= estimate_rank_memory(shape, setup).total:
            return (f". Full fine-tuning with these settings would need about {full / GiB:.1f} GiB per rank and "
                    f"would not fit; LoRA does")
        return ""
    t = lora_params(shape, LORA_SUGGESTED_RANK, LoraConfig().target_modules)
    lora = estimate_rank_memory(shape, replace(setup, lora_params=t)).total
    if estimate_rank_memory(shape, setup).total > usable(gpu_bytes) >= lora:
        return (f". Full fine-tuning does not fit; LoRA would: training.lora.r={LORA_SUGGESTED_RANK} "
                f"({t / 1e6:,.1f}M trainable parameters) needs about {lora / GiB:.1f} GiB per rank")
    return ""


def check_run(cfg: Any, shape: ModelShape, given_gib: float | None = None) -> tuple[str, str]:
    """("problem" | "note", message) of a RunConfig's training against the GPUs' memory, for preflight's report.
    The alternatives are the shipped ds_configs/*.json; colocated ranks are at most the engines' GPUs."""
    import json

    from east_ds.training.engine import REPO_ROOT, build_ds_config

    t = cfg.training
    try:
        gpu_bytes, source = gpu_memory(given_gib)
    except ValueError as e:
        return "problem", str(e)
    try:
        setup = train_setup(cfg, build_ds_config(t, cfg.model, t.num_ranks))
    except (ValueError, FileNotFoundError):
        return "note", "not estimated: the DeepSpeed config or the batch sizes are wrong (see training)"
    if t.lora.enabled:
        setup = replace(setup, lora_params=lora_params(shape, t.lora.r, t.lora.target_modules))
    choices = {f"ds_configs/{p.name}": json.loads(p.read_text()).get("zero_optimization", {"stage": 0})
               for p in sorted((REPO_ROOT / "ds_configs").glob("*.json"))}
    max_ranks = cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size if setup.colocated else 64
    fits, message = memory_verdict(shape, setup, gpu_bytes, source, t.deepspeed_config, choices, max_ranks)
    return ("note" if fits else "problem"), message
