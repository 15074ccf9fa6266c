"""Training data prep, pure: check the examples table, tokenise, plan length-grouped batches, pad.

No DeepSpeed, no torch.distributed. The rank and world size come in as arguments.

Tokens of one sequence = tok(prompt, add_special_tokens=False) + tok(response, add_special_tokens=False) + [eos]
(the prompt already carries BOS from the chat template). Targets are the response tokens and the EOS.

Batch plan: the global batches of an epoch depend only on (seed, epoch, global batch size, lengths), never on
the world size or the accumulation steps, so 1 rank x 4 micro-batches and 2 ranks x 2 see the same examples in
the same optimizer step. Within a global batch the examples are sorted by length and cut into micro-batches;
micro-batch k of a step goes to rank k % world, accumulation slot k // world.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from east_ds.schema import loss_spec
from east_ds.tables import TableError

log = logging.getLogger(__name__)


@dataclass
class TokenizedExamples:
    """The usable examples of a table. Example j has `seqs[j]` = [(ids, n_prompt), ...] per sequence column
    (schema.LOSSES[loss].sequence_columns)."""

    loss: str
    seqs: list[list[tuple[list[int], int]]]
    weights: np.ndarray  # (N,) float64, >= 0
    rows: np.ndarray  # (N,) row index in the source table
    labels: np.ndarray | None = None  # (N,) bool, losses with a label column (KTO)
    ref: np.ndarray | None = None  # (N, k) reference log-probs in reference_columns order, when read
    stats: dict = field(default_factory=dict)  # rows, kept, truncated, dropped_* counts

    def __len__(self) -> int:
        return len(self.seqs)

    def lengths(self) -> np.ndarray:
        """Tokens an example puts through the model in training (all its sequences). Shape (N,)."""
        return np.array([sum(len(ids) for ids, _ in s) for s in self.seqs], dtype=np.int64)


def check_examples(df: pd.DataFrame, loss: str, where: str, need_reference: bool = False) -> None:
    """Raise TableError naming the file, column and row of the first problem: missing column, a weight that is
    NaN or negative, a non-string text, a non-boolean KTO label, a missing or NaN reference log-prob."""
    spec = loss_spec(loss)
    required = list(spec.example_columns) + (list(spec.reference_columns) if need_reference else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = " (run the reference phase first)" if set(missing) & set(spec.reference_columns) else ""
        raise TableError(f"{where}: missing column(s) {missing} for loss {loss!r}{hint}; found {list(df.columns)}")
    if len(df) == 0:
        raise TableError(f"{where}: the examples table is empty")
    w = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if len(bad):
        i = int(bad[0])
        raise TableError(f"{where}: row {i}, column 'weight': {df['weight'].iloc[i]!r} is not a finite number >= 0 "
                         f"({len(bad)} bad row(s): {bad[:10].tolist()})")
    for col in ("prompt",) + spec.sequence_columns:
        notstr = [i for i, v in enumerate(df[col].tolist()) if not isinstance(v, str)]
        if notstr:
            raise TableError(f"{where}: row {notstr[0]}, column {col!r}: expected text, got {df[col].iloc[notstr[0]]!r}")
    if spec.label_column:
        col = spec.label_column
        badl = [i for i, v in enumerate(df[col].tolist()) if not isinstance(v, (bool, np.bool_))]
        if badl:
            raise TableError(f"{where}: row {badl[0]}, column {col!r}: expected true/false, got "
                             f"{df[col].iloc[badl[0]]!r}")
    if need_reference:
        for col in spec.reference_columns:
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            badr = np.flatnonzero(~np.isfinite(v))
            if len(badr):
                raise TableError(f"{where}: row {int(badr[0])}, column {col!r}: reference log-prob is not finite")


def encode(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int] | None, int, str]:
    """(ids, n_prompt, status): status "ok", "truncated" (response cut from the right to max_len, EOS lost),
    or "prompt_too_long" (ids None: the prompt leaves no room for a response token)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(p) >= max_len:
        return None, len(p), "prompt_too_long"
    ids = p + r + [tokenizer.eos_token_id]
    if len(ids) > max_len:
        return ids[:max_len], len(p), "truncated"
    return ids, len(p), "ok"


def tokenize_examples(df: pd.DataFrame, tokenizer, loss: str, max_len: int, max_prompt_len: int | None = None,
                      where: str = "examples", need_reference: bool = False) -> TokenizedExamples:
    """Check and tokenise an examples table. Rows whose prompt is too long (over max_len, or over max_prompt_len
    for DPO/KTO) or whose response is empty are dropped; long responses are truncated. Each is counted in
    `stats` and logged with its row numbers; a table with nothing left is an error."""
    check_examples(df, loss, where, need_reference)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; SFT needs it as the last target")
    spec = loss_spec(loss)
    cols = spec.sequence_columns
    prompt_cap = min(max_len, max_prompt_len + 1) if spec.prompt_budget and max_prompt_len else max_len
    seqs, rows = [], []
    dropped: dict[str, list[int]] = {"dropped_prompt_too_long": [], "dropped_empty_response": []}
    truncated: list[int] = []
    records = df.to_dict("records")
    for i, row in enumerate(records):
        # the KL response of KTO is another question's answer; an empty one is allowed (EOS only)
        if any(not row[c].strip() for c in cols if c != spec.kl_column):
            dropped["dropped_empty_response"].append(i)
            continue
        enc = [encode(tokenizer, row["prompt"], row[c], max_len) for c in cols]
        if any(st == "prompt_too_long" or n_p >= prompt_cap for _, n_p, st in enc):
            dropped["dropped_prompt_too_long"].append(i)
            continue
        if any(st == "truncated" for _, _, st in enc):
            truncated.append(i)
        seqs.append([(ids, n_p) for ids, n_p, _ in enc])
        rows.append(i)
    for name, idx in list(dropped.items()) + [("truncated", truncated)]:
        if idx:
            log.warning("%s: %d row(s) %s (rows %s%s)", where, len(idx), name.replace("_", " "), idx[:10],
                        " ..." if len(idx) > 10 else "")
    if not seqs:
        raise TableError(f"{where}: no usable example left (dropped: "
                         f"{ {k: len(v) for k, v in dropped.items()} }, max_len={max_len})")
    rows_a = np.array(rows, dtype=np.int64)
    sub = df.iloc[rows_a]
    stats = {"rows": len(df), "kept": len(rows), "truncated": len(truncated),
             **{k: len(v) for k, v in dropped.items()}}
    return TokenizedExamples(
        loss=loss,
        seqs=seqs,
        weights=pd.to_numeric(sub["weight"]).to_numpy(dtype=np.float64),
        rows=rows_a,
        labels=sub[spec.label_column].to_numpy(dtype=bool) if spec.label_column else None,
        ref=sub[list(spec.reference_columns)].to_numpy(dtype=np.float64)
        if need_reference and spec.needs_reference else None,
        stats=stats,
    )


# ----------------------------------------------------------------------------------------------------------------
# Batch plan


def steps_per_epoch(n_examples: int, global_batch_size: int) -> int:
    """Optimizer steps in one epoch; the last incomplete global batch is dropped (its examples vary by epoch)."""
    return n_examples // global_batch_size


def plan_epoch(lengths: np.ndarray, global_batch_size: int, micro_batch_size: int, epoch: int, seed: int,
               group_by_length: bool = True, group_size: int = 16) -> list[list[list[int]]]:
    """The steps of one epoch: a list of steps, each a list of micro-batches (lists of example indices).

    A seeded permutation of the examples is cut into windows of `group_size` global batches; with
    `group_by_length` each window is sorted by length (so a global batch holds similar lengths) and the
    window's global batches are shuffled. Within a global batch, examples are sorted by length (descending)
    and cut into micro-batches of `micro_batch_size`. Deterministic in (seed, epoch); independent of the world.
    """
    n = len(lengths)
    B = global_batch_size
    n_steps = steps_per_epoch(n, B)
    if n_steps == 0:
        raise ValueError(f"{n} usable examples are fewer than one global batch ({B})")
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)[: n_steps * B]
    batches: list[np.ndarray] = []
    if group_by_length:
        window = B * max(1, group_size)
        for s in range(0, len(perm), window):
            chunk = perm[s : s + window]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            batches.extend(chunk[j : j + B] for j in range(0, len(chunk), B))
        batches = [batches[k] for k in rng.permutation(len(batches))]
    else:
        batches = [perm[j : j + B] for j in range(0, len(perm), B)]
    steps = []
    for gb in batches:
        if group_by_length:
            gb = gb[np.argsort(-lengths[gb], kind="stable")]
        steps.append([gb[j : j + micro_batch_size].tolist() for j in range(0, B, micro_batch_size)])
    return steps


def plan(lengths: np.ndarray, global_batch_size: int, micro_batch_size: int, epochs: int, seed: int,
         group_by_length: bool = True, group_size: int = 16) -> list[list[list[int]]]:
    """All steps of all epochs, in order. Step s of the result is optimizer step s (the resume position)."""
    out = []
    for e in range(epochs):
        out.extend(plan_epoch(lengths, global_batch_size, micro_batch_size, e, seed, group_by_length, group_size))
    return out


def rank_micro_batches(step: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """The micro-batches of one step that `rank` runs, in accumulation order."""
    return step[rank::world_size]


def padding_fraction(steps: list[list[list[int]]], lengths_per_seq: list[list[int]]) -> float:
    """Fraction of padded positions over all forwarded sequences, when each micro-batch is padded to its longest
    sequence. lengths_per_seq[j] lists the lengths of example j's sequences."""
    real = total = 0
    for step in steps:
        for mb in step:
            ls = [L for j in mb for L in lengths_per_seq[j]]
            real += sum(ls)
            total += max(ls) * len(ls)
    return 1.0 - real / total if total else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Collation


def collate(seqs: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad sequences into input_ids, attention_mask, loss_mask, each (S, T) with T the longest sequence.

    loss_mask is 1 on response tokens and EOS (positions >= n_prompt), 0 on prompt and padding. Right padding
    leaves every real position's position id and causal context unchanged, so an example's loss does not depend
    on what it is batched with.
    """
    T = max(len(ids) for ids, _ in seqs)
    S = len(seqs)
    input_ids = torch.full((S, T), pad_id, dtype=torch.long)
    attn = torch.zeros((S, T), dtype=torch.long)
    lmask = torch.zeros((S, T), dtype=torch.long)
    for k, (ids, n_p) in enumerate(seqs):
        input_ids[k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attn[k, : len(ids)] = 1
        lmask[k, n_p : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "loss_mask": lmask}


def micro_batch_tensors(ex: TokenizedExamples, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Everything one micro-batch needs. Sequences are grouped by column: for DPO [chosen_0..m-1, rejected_0..m-1];
    the KL column (KTO's) goes apart as `kl_input_ids`, `kl_attention_mask`, `kl_loss_mask`. Weights (m,),
    labels (m,) when the loss has a label column, ref (m, k) when read."""
    m = len(idx)
    spec = loss_spec(ex.loss)
    out: dict[str, torch.Tensor] = {"weights": torch.tensor(ex.weights[idx], dtype=torch.float32)}
    main = [c for c, col in enumerate(spec.sequence_columns) if col != spec.kl_column]
    out.update(collate([ex.seqs[j][c] for c in main for j in idx], pad_id))
    if spec.kl_column:
        kl = collate([ex.seqs[j][spec.sequence_columns.index(spec.kl_column)] for j in idx], pad_id)
        out.update({f"kl_{k}": v for k, v in kl.items()})
    if ex.labels is not None:
        out["labels"] = torch.tensor(ex.labels[idx], dtype=torch.bool)
    if ex.ref is not None:
        out["ref"] = torch.tensor(ex.ref[idx], dtype=torch.float32)
    out["num_examples"] = torch.tensor(m)
    return out


def num_tokens(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, padded positions incl. real) that a training micro-batch forwards."""
    real = int(batch["attention_mask"].sum()) + int(batch.get("kl_attention_mask", torch.zeros(0)).sum())
    total = batch["attention_mask"].numel() + batch.get("kl_attention_mask", torch.zeros(0)).numel()
    return real, total


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


__all__ = [
    "TokenizedExamples", "check_examples", "encode", "tokenize_examples", "steps_per_epoch", "plan_epoch", "plan",
    "rank_micro_batches", "padding_fraction", "collate", "micro_batch_tensors", "num_tokens", "ceil_div",
]
