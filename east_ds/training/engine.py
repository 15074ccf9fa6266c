"""DeepSpeed ZeRO training engine for entropy-weighted SFT, DPO and KTO. The only module that imports deepspeed.

Works in any process that is one rank of a job: a `deepspeed` launcher process (east_ds.train), a Ray actor
(east_ds.training.actors), or a plain single process (world of 1, used by tests and benchmarks).

    reference_logprobs(model_path, train_cfg, model_cfg, examples_path, out_path) -> metrics
    fit(model_path, train_cfg, model_cfg, examples_path, out_dir, resume=True) -> metrics

Departures and choices, numbered:
1. Batch sizes come only from TrainConfig; the DeepSpeed JSON holds ZeRO policy. micro x accumulation x world
   != global is an error naming the numbers; a JSON with batch, optimizer, scheduler or clipping fields is an
   error. Precision comes from ModelConfig.dtype (bf16/fp16 sections are generated).
2. Loss scaling: each micro-batch's loss is sum_i w_i l_i * world * gas / B (losses.weighted_batch_loss), which
   cancels DeepSpeed's 1/gas and rank averaging exactly.
3. KTO's z0 is estimated per global batch (no-grad forward over all the step's KL pairs, all-reduced) before
   the step's backward passes, so it does not change with the split. TRL estimates it per micro-batch.
4. The last incomplete global batch of an epoch is dropped; the data order is a function of (seed, epoch), so
   the step number is the whole data-order position saved in the DeepSpeed checkpoint.
5. The model is reloaded from `model_path` on every call (nothing is kept between iterations).
6. A step whose loss or gradient norm is not finite stops `fit` on every rank with divergence.TrainingDiverged,
   before anything of it is saved or exported (DeepSpeed itself skips such a step and goes on).
The DeepSpeed config is generated in ds_config.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from east_ds.training import batches as td
from east_ds.training import divergence as dv
from east_ds.training import lora
from east_ds.training.ds_config import REPO_ROOT, build_ds_config, linear_schedule, resolve_path  # noqa: F401
from east_ds.config import ModelConfig, TrainConfig
from east_ds.data.load import check_model_path
from east_ds.cluster import device_plan as plan
from east_ds.training.losses import LOSS_FNS, kto_reference_point, sequence_logps, sft_loss, weighted_batch_loss
from east_ds.schema import REFERENCE_COLUMNS, loss_spec
from east_ds.tables import append_jsonl, read_jsonl, read_table, write_json, write_table

log = logging.getLogger(__name__)
OPTIMIZER_KEYS = ("lr", "warmup_ratio", "grad_clip", "weight_decay", "adam_betas", "adam_eps")  # recorded per call

# ----------------------------------------------------------------------------------------------------------------
# Distributed setup and model loading


def init_distributed(store=None) -> tuple[int, int]:
    """Join (or create, for a lone process) the process group: gloo on CPU, nccl on CUDA. Returns (rank, world).
    `store`: a torch.distributed store already open for this group (rank and world size from RANK and
    WORLD_SIZE); without it the group meets at MASTER_ADDR:MASTER_PORT (env://)."""
    os.environ["PATH"] = plan.jit_build_path(os.environ.get("PATH", ""), sys.executable)  # before any JIT op build
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a lone process: a world of one, its store on a loopback port of its own
            if store is None:
                store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(store.port))
        from deepspeed.accelerator import get_accelerator

        # One source of truth for the device: DeepSpeed's accelerator (DS_ACCELERATOR=cpu on a CUDA node trains on
        # the CPU, so it must talk gloo, not nccl). The timeout covers rank 0 writing a large export alone.
        backend = plan.process_group_backend(get_accelerator().device_name())
        timeout = timedelta(minutes=plan.PROCESS_GROUP_TIMEOUT_MIN)
        if store is not None:  # DeepSpeed keeps a group it finds initialised
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """barrier + destroy_process_group: without it a torchrun/deepspeed rank can abort at exit (seen in 1 of 11
    CPU runs)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def release_device_memory() -> None:
    """Collect garbage and return PyTorch's cached CUDA blocks to the device (a no-op without CUDA)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(model_path: str, model_cfg: ModelConfig, ds_config: dict):
    """(model, tokenizer, keepalive). ZeRO-3 loads partitioned through HfDeepSpeedConfig, which must stay alive
    (the caller holds `keepalive`) until deepspeed.initialize; zero.Init crashed with transformers 5.19."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    check_model_path(weights := lora.base_model_path(model_path))  # an adapter directory: its base model first
    keepalive = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"].get("stage", 0) == 3 else None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[model_cfg.dtype]
    try:
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype,
                                                     trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise FileNotFoundError(f"cannot load model {model_path!r}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = False
    return model, tok, keepalive


# ----------------------------------------------------------------------------------------------------------------
# The engine


class TrainingEngine:
    """A DeepSpeed engine around a causal LM, with the weighted losses. One per rank per call."""

    def __init__(self, model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, total_steps: int = 1,
                 training: bool = True):
        import deepspeed

        self.cfg, self.model_cfg = train_cfg, model_cfg
        self.rank, self.world = init_distributed()
        self.ds_config = build_ds_config(train_cfg, model_cfg, self.world, training)
        model, self.tokenizer, self._hf_ds = load_model(model_path, model_cfg, self.ds_config)
        if training and train_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = lora.attach(model, model_path, train_cfg.lora, training, train_cfg.seed)  # training.lora, peft
        self.adapter = hasattr(model, "peft_config")  # frozen base: checkpoints and exports hold the adapter only
        self.stage = self.ds_config["zero_optimization"].get("stage", 0)
        kw = {}
        if training:
            sched = linear_schedule(total_steps, train_cfg.warmup_ratio)
            kw = {"model_parameters": [p for p in model.parameters() if p.requires_grad],
                  "lr_scheduler": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched)}
        self.engine, *_ = deepspeed.initialize(model=model, config=self.ds_config, **kw)
        self.engine.train(training)
        self.pad_id = self.tokenizer.pad_token_id

    # -- forward ---------------------------------------------------------------------------------------------
    def _logps(self, ids, attn, lmask, per_token_mean: bool = False) -> torch.Tensor:
        dev = self.engine.device
        logits = self.engine(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False).logits
        if per_token_mean:
            return sft_loss(logits, ids.to(dev), lmask.to(dev))
        return sequence_logps(logits, ids.to(dev), lmask.to(dev))

    def example_losses(self, mb: dict, z0: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example losses (m,) of one micro-batch from batches.micro_batch_tensors (losses.LOSS_FNS)."""
        return LOSS_FNS[self.cfg.loss](self._logps, mb, self.cfg, z0)

    def kto_z0(self, micro_batches: list[dict]) -> torch.Tensor:
        """z0 of one global batch: no-grad forward over this rank's KL pairs, summed and all-reduced."""
        import deepspeed.comm as dist

        acc = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for mb in micro_batches:
                lp = self._logps(mb["kl_input_ids"], mb["kl_attention_mask"], mb["kl_loss_mask"]).double().cpu()
                acc += torch.stack([(lp - mb["ref"][:, 1].double()).sum(), torch.tensor(float(len(lp)))])
        acc = acc.to(self.engine.device)
        dist.all_reduce(acc)
        return kto_reference_point(acc[0].float(), acc[1].float())

    # -- one optimizer step -----------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict:
        """Forward/backward over this rank's micro-batches of one step, then the optimizer step. Metrics are
        global (all-reduced): loss = sum_i w_i l_i / B, loss_unweighted = sum_i l_i / B."""
        import deepspeed.comm as dist

        t0 = time.perf_counter()
        lr = float(self.engine.get_lr()[0])
        B = self.cfg.global_batch_size
        z0 = self.kto_z0(micro_batches) if loss_spec(self.cfg.loss).kl_column else None
        own_norm = None
        acc = torch.zeros(4, dtype=torch.float64)  # sum w l, sum l, real tokens, padded positions
        for mb in micro_batches:
            per = self.example_losses(mb, z0)
            w = mb["weights"].to(per.device)
            loss = weighted_batch_loss(per, w, B, self.world, self.cfg.gradient_accumulation_steps)
            self.engine.backward(loss)
            if self.stage == 0 and self.engine.is_gradient_accumulation_boundary():
                own_norm = self._grad_norm()  # fp32 stage 0: DeepSpeed clips without recording the norm
            self.engine.step()
            real, total = td.num_tokens(mb)
            acc += torch.tensor([float((w * per.detach()).double().sum()), float(per.detach().double().sum()),
                                 real, total], dtype=torch.float64)
        acc = acc.to(self.engine.device)
        dist.all_reduce(acc)
        acc = acc.cpu()
        dt = time.perf_counter() - t0
        gn = self.engine.get_global_grad_norm()
        if gn is None and self.stage == 0:
            gn = own_norm
        self.last_grad_norm = float(gn) if gn is not None else None  # None: not computed (nothing to check)
        self.last_skipped_by_loss_scaling = self.model_cfg.dtype == "float16" and not self.engine.was_step_applied()
        out = {"loss": acc[0].item() / B, "loss_unweighted": acc[1].item() / B, "lr": lr,
               "grad_norm": float(gn) if gn is not None else float("nan"), "step_time": dt,
               "tokens": int(acc[2]), "tokens_per_s": acc[2].item() / dt, "padding_frac": 1 - acc[2].item() /
               max(1.0, acc[3].item())}
        if z0 is not None:
            out["kto_z0"] = float(z0)
        return out

    def diverged(self, loss: float) -> list[str]:
        """What is not finite in the last step (divergence.problems), the same on every rank (divergence.agree)."""
        found = dv.problems(loss, self.last_grad_norm, self.last_skipped_by_loss_scaling)
        return dv.agree(found, self.engine.device)

    @torch.no_grad()
    def _grad_norm(self) -> float:
        grads = [p.grad.double().pow(2).sum() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).sum().sqrt()) if grads else float("nan")

    @torch.no_grad()
    # -- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, ckpt_dir: Path, step: int, client_state: dict) -> None:
        """DeepSpeed checkpoint `step_<n>` (all ranks), then rank 0 removes older ones."""
        import deepspeed.comm as dist

        self.engine.save_checkpoint(str(ckpt_dir), tag=f"step_{step}", client_state={**client_state, "step": step},
                                    exclude_frozen_parameters=self.adapter)
        dist.barrier()
        if self.rank == 0:
            for old in ckpt_dir.glob("step_*"):
                if old.name != f"step_{step}":
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load_checkpoint(self, ckpt_dir: Path) -> dict | None:
        """client_state of the latest checkpoint in ckpt_dir (weights, optimizer, schedule restored), or None."""
        if not (ckpt_dir / "latest").is_file():
            return None
        path, client = self.engine.load_checkpoint(str(ckpt_dir), load_module_strict=not self.adapter)
        if path is None:
            raise RuntimeError(f"{ckpt_dir}: DeepSpeed could not load the latest checkpoint")
        return client

    def export_hf(self, out_dir: Path) -> None:
        """A save_pretrained directory (consolidated from ZeRO-3) plus the tokenizer; written to a temp dir and
        renamed, so out_dir is either complete or absent."""
        import deepspeed.comm as dist

        if self.stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # gathered on rank 0, in training dtype
        else:
            state = self.engine.module.state_dict() if self.rank == 0 else None
        if self.rank == 0:
            tmp = out_dir.with_name(out_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            module = self.engine.module
            module.config.use_cache = True
            module.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            module.config.use_cache = False
            self.tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(tmp, out_dir)
        dist.barrier()

    def close(self) -> None:
        """Destroy the DeepSpeed engine and hand its memory back: on a GPU shared with sleeping vLLM engines the
        cached blocks must be returned before the engines wake (device_plan.sleep_plan)."""
        with contextlib.suppress(Exception):
            self.engine.destroy()
        self.engine = None
        self._hf_ds = None
        release_device_memory()


# ----------------------------------------------------------------------------------------------------------------
# Phases


def reference_logprobs(model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, examples_path: str,
                       out_path: str, nll: bool = False) -> dict:
    """Summed response log-probs of the frozen starting model for DPO/KTO, stored as REFERENCE_COLUMNS.

    Every rank scores a strided share of the examples; rank 0 writes `out_path` = the usable rows of the
    examples table (rows dropped by tokenisation are left out and counted) plus the reference columns.
    With `nll`, the table is SFT-shaped (prompt, response) and each row gets `nll`, the mean token NLL of its
    response: the perplexity-based uncertainty of docs/method.md section 4.
    """
    import deepspeed.comm as dist

    if not nll and not loss_spec(train_cfg.loss).needs_reference:
        raise ValueError(f"training.loss {train_cfg.loss!r} needs no reference log-probs")
    loss = "sft" if nll else train_cfg.loss  # the nll table is SFT-shaped (prompt, response)
    t0 = time.perf_counter()
    eng = TrainingEngine(model_path, train_cfg, model_cfg, training=False)
    df = read_table(examples_path)
    ex = td.tokenize_examples(df, eng.tokenizer, loss, train_cfg.max_len, train_cfg.max_prompt_len,
                              where=str(examples_path))
    mine = list(range(eng.rank, len(ex), eng.world))
    m = train_cfg.micro_batch_size
    n_batches = td.ceil_div(td.ceil_div(len(ex), eng.world), m)  # equal on all ranks (ZeRO-3 forwards together)
    results = []
    with torch.no_grad():
        for b in range(n_batches):
            idx = mine[b * m : (b + 1) * m]
            real = len(idx)
            idx = idx + [0] * (m - real)  # filler so every rank forwards the same number of batches
            n_cols = len(ex.seqs[0])
            batch = td.collate([ex.seqs[j][c] for c in range(n_cols) for j in idx], eng.pad_id)
            lp = eng._logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                            per_token_mean=nll).double().cpu()
            lp = lp.view(n_cols, m).T  # (m, n_cols)
            results.extend((idx[k], lp[k].tolist()) for k in range(real))
    gathered = [None] * eng.world
    dist.all_gather_object(gathered, results)
    metrics = {"rows": ex.stats["rows"], "kept": len(ex), **ex.stats, "seconds": time.perf_counter() - t0}
    if eng.rank == 0:
        columns = ("nll",) if nll else REFERENCE_COLUMNS[loss]
        ref = np.full((len(ex), len(columns)), np.nan)
        for part in gathered:
            for j, vals in part:
                ref[j] = vals
        out = df.iloc[ex.rows].reset_index(drop=True).copy()
        for c, col in enumerate(columns):
            out[col] = ref[:, c]
        write_table(out, out_path)
    dist.barrier()
    eng.close()
    return metrics


class _Schedule(NamedTuple):
    """A call's examples, step plan, stop and the fingerprint a summary or DeepSpeed checkpoint must match."""

    ex: td.TokenizedExamples
    steps: list[list[list[int]]]  # per step, per micro-batch, example indices
    total: int
    stop: int
    fingerprint: dict


def fit(model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, examples_path: str, out_dir: str,
        resume: bool = True, progress: bool = True) -> dict:
    """Train on examples_path; HF export in out_dir/hf, per-step metrics in out_dir/metrics.jsonl, summary in
    out_dir/train_summary.json. Stops after train_cfg.max_steps total steps if set.

    Checkpoints hold what a resume needs and nothing more: a DeepSpeed checkpoint (weights, optimizer, schedule,
    data position) in out_dir/ds_checkpoint every `save_every_steps` steps while training, and at the end of a
    call that stops before the schedule's last step; once the last step is exported the DeepSpeed checkpoint is
    removed (rank 0). With `resume`, a finished run (summary with the same fingerprint, export present) returns
    its summary at once, and an unfinished one continues from the latest DeepSpeed checkpoint."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    ckpt_dir = out / "ds_checkpoint"
    ex, steps, total, stop, fingerprint = sched = _schedule(model_path, train_cfg, model_cfg, examples_path)
    if resume and (done := _finished(out, fingerprint, stop)) is not None:
        return done
    eng = TrainingEngine(model_path, train_cfg, model_cfg, total_steps=total)
    _forget_divergence(eng, out, model_path)  # a diverged call's state is never resumed from
    start = _resume_step(eng, ckpt_dir, fingerprint) if resume else 0
    last = _train_steps(eng, sched, start, out, examples_path, progress)
    if stop < total and stop > start:  # a later call continues this schedule: it needs the optimizer state
        eng.save_checkpoint(ckpt_dir, stop, fingerprint)
    eng.export_hf(out / "hf")
    seq_lens = [[len(ids) for ids, _ in s] for s in ex.seqs]
    summary = {"steps": stop, "total_steps": total, "start_step": start, "examples": len(ex), **ex.stats,
               "padding_frac_plan": td.padding_fraction(steps, seq_lens), "seconds": time.perf_counter() - t_start,
               "world_size": eng.world, "fingerprint": fingerprint, **{f"last_{k}": v for k, v in last.items()},
               "optimizer": {k: getattr(train_cfg, k) for k in OPTIMIZER_KEYS}}
    if eng.rank == 0:
        write_json(summary, out / "train_summary.json")
        if stop == total:  # the export and the summary are all a rerun needs; the optimizer state is ~6x the model
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    eng.close()
    return summary


def _schedule(model_path: str, train_cfg: TrainConfig, model_cfg: ModelConfig, examples_path: str) -> _Schedule:
    """Tokenise the examples and plan the steps, before any engine is built, so bad input fails fast."""
    from transformers import AutoTokenizer

    df = read_table(examples_path)
    check_model_path(lora.base_model_path(model_path))
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_cfg.trust_remote_code)
    ex = td.tokenize_examples(df, tok, train_cfg.loss, train_cfg.max_len, train_cfg.max_prompt_len,
                              where=str(examples_path), need_reference=loss_spec(train_cfg.loss).needs_reference)
    steps = td.plan(ex.lengths(), train_cfg.global_batch_size, train_cfg.micro_batch_size, train_cfg.epochs,
                    train_cfg.seed, train_cfg.group_by_length, train_cfg.length_group_size)
    total = len(steps)
    stop = min(total, train_cfg.max_steps) if train_cfg.max_steps > 0 else total
    fingerprint = {"examples": len(ex), "global_batch_size": train_cfg.global_batch_size, "seed": train_cfg.seed,
                   "epochs": train_cfg.epochs, "total_steps": total}
    return _Schedule(ex, steps, total, stop, fingerprint)


def _finished(out: Path, fingerprint: dict, stop: int) -> dict | None:
    """The summary of an earlier call that trained this schedule (same fingerprint) up to `stop` and exported it
    (out/hf present), or None when there is training to do."""
    summary_path = out / "train_summary.json"
    done = json.loads(summary_path.read_text()) if (out / "hf").is_dir() and summary_path.is_file() else {}
    if done.get("fingerprint") == fingerprint and done.get("steps", 0) >= stop:
        log.info("%s: trained and exported earlier (%d steps); nothing to do", out, done["steps"])
        return done
    return None


def _resume_step(eng: TrainingEngine, ckpt_dir: Path, fingerprint: dict) -> int:
    """The step to continue from: that of the latest DeepSpeed checkpoint in ckpt_dir (loaded into the engine),
    which must have been made for this schedule, or 0 without one."""
    client = eng.load_checkpoint(ckpt_dir)
    if client is None:
        return 0
    if (got := {k: client.get(k) for k in fingerprint}) != fingerprint:
        raise ValueError(f"{ckpt_dir}: checkpoint was made for {got}, this run is {fingerprint}")
    log.info("resumed from %s at step %d", ckpt_dir, int(client["step"]))
    return int(client["step"])


def _train_steps(eng: TrainingEngine, sched: _Schedule, start: int, out: Path, examples_path: str,
                 progress: bool) -> dict:
    """Steps start..stop of the schedule (eng.cfg: the call's TrainConfig): rank 0 logs each to out/metrics.jsonl
    (trimmed to `start` first) and the progress bar; a diverged step stops every rank before it is saved; a
    DeepSpeed checkpoint every save_every_steps steps before the stop. Returns the last step's metrics."""
    cfg, ex, steps = eng.cfg, sched.ex, sched.steps
    ckpt_dir, metrics_path = out / "ds_checkpoint", out / "metrics.jsonl"
    if eng.rank == 0:
        _trim_step_log(metrics_path, start)
    bar = None
    if eng.rank == 0 and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sched.stop, initial=start, desc=f"train {cfg.loss}", unit="step")
    last: dict = {}
    spe = sched.total // cfg.epochs
    for s in range(start, sched.stop):
        mbs = [td.micro_batch_tensors(ex, idx, eng.pad_id) for idx in td.rank_micro_batches(steps[s], eng.rank,
                                                                                             eng.world)]
        last = eng.train_step(mbs)
        w = ex.weights[[j for mb in steps[s] for j in mb]]
        last.update(step=s + 1, epoch=s // spe, weight_min=float(w.min()), weight_mean=float(w.mean()),
                    weight_max=float(w.max()))
        if eng.rank == 0:
            append_jsonl(last, metrics_path)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
        if found := eng.diverged(last["loss"]):  # before any checkpoint or export of this step
            raise _stop_diverged(eng, out, bar, dv.diverged_error(out, examples_path, s + 1, sched.total, found,
                                                                  last["lr"], cfg.lr, last["loss"], eng.last_grad_norm))
        if cfg.save_every_steps and (s + 1) % cfg.save_every_steps == 0 and s + 1 < sched.stop:
            eng.save_checkpoint(ckpt_dir, s + 1, sched.fingerprint)
    if bar is not None:
        bar.close()
    return last


def _trim_step_log(metrics_path: Path, start: int) -> None:
    """Keep the step log's lines up to `start`: steps after the checkpoint a call resumes from were lost with the
    crash (or diverged), so their lines go too and the log holds each step once."""
    if metrics_path.is_file():
        kept = [r for r in read_jsonl(metrics_path) if int(r.get("step", 0)) <= start]
        tmp = metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, metrics_path)


def _forget_divergence(eng: TrainingEngine, out: Path, model_path: str) -> None:
    """Before training in `out`: rank 0 removes what a diverged earlier call left (divergence.forget); the others
    wait for it, so none loads a checkpoint being removed."""
    import deepspeed.comm as dist

    if eng.rank == 0 and dv.forget(out) is not None:
        log.warning("%s: an earlier call diverged here; training starts again from %s", out, model_path)
    dist.barrier()


def _stop_diverged(eng: TrainingEngine, out: Path, bar, error: dv.TrainingDiverged) -> dv.TrainingDiverged:
    """Every rank, on a diverged step: rank 0 records it and removes the DeepSpeed checkpoint (divergence.record),
    then each rank closes its engine. Returns the error to raise."""
    import deepspeed.comm as dist

    if bar is not None:
        bar.close()
    if eng.rank == 0:
        dv.record(out, error)
    dist.barrier()
    eng.close()
    return error
