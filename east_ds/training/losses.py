"""Entropy-weighted SFT, DPO and KTO losses (EAST, arXiv 2503.23913; docs/method.md section 3). Pure torch.

Every loss is computed per example, multiplied by that example's weight w_i, and reduced once, by
`weighted_batch_loss`: sum_i w_i * loss_i / B with B the global batch size. Nothing here knows about ranks or
DeepSpeed; the world size and the accumulation steps come in as arguments.

Shapes: B_m = examples in a micro-batch, T = padded sequence length, V = vocabulary.

LOSS_FNS holds one per-example loss per loss of schema.LOSSES, all with one signature, so the engine calls
`LOSS_FNS[cfg.loss](logps, micro_batch, cfg, z0)` and knows no loss by name; tests/test_config.py checks that
LOSS_FNS and schema.LOSSES name the same losses.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from east_ds.config import TrainConfig


# Elements (positions x V) of logits cast to float32 at one time by `token_logps`: 2^24 floats = 64 MiB, about 110
# positions of a 152k vocabulary. A whole (2, 2048, 152k) float32 copy would be 2.5 GB.
LOGP_CHUNK_ELEMENTS = 1 << 24


def _chunks(b: int, t: int, v: int, chunk_elements: int):
    """(slice over B, slice over T) blocks of a (b, t, v) tensor with at most max(chunk_elements, v) elements each.

    A block is several whole rows when one row (t * v) fits, else part of one row, at least one position.
    """
    per_block = max(1, chunk_elements // max(v, 1))  # positions per block
    if per_block >= t:
        rows = max(1, per_block // max(t, 1))
        for b0 in range(0, b, rows):
            yield slice(b0, min(b0 + rows, b)), slice(0, t)
    else:
        for b0 in range(b):
            for t0 in range(0, t, per_block):
                yield slice(b0, b0 + 1), slice(t0, min(t0 + per_block, t))


class _TargetLogps(torch.autograd.Function):
    """log softmax(logits[:, t])[input_ids[:, t+1]] for t < T-1, float32, a chunk of positions at a time.

    picked_t = logits_t[y_t] - logsumexp_v logits_t[v]; d picked_t / d logits_t = onehot(y_t) - softmax(logits_t).
    Only one chunk is ever in float32; the graph keeps `logits` itself (in its own dtype, already alive) and the
    (B_m, T-1) float32 logsumexp, never a dense float32 (B_m, T, V). The gradient is written straight into one
    tensor shaped and typed like `logits` (last position 0: it predicts nothing).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk_elements: int) -> torch.Tensor:
        b, t1 = targets.shape  # t1 = T - 1
        v = logits.shape[-1]
        lse = torch.empty(b, t1, dtype=torch.float32, device=logits.device)  # (B_m, T-1)
        for bs, ts in _chunks(b, t1, v, chunk_elements):
            lse[bs, ts] = torch.logsumexp(logits[bs, ts].float(), dim=-1)  # the only float32 (rows, V) copy
        picked = logits[:, :-1].gather(2, targets.unsqueeze(-1)).squeeze(-1).float()  # (B_m, T-1), exact cast
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_elements = chunk_elements
        return picked - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        b, t1 = targets.shape
        v = logits.shape[-1]
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)  # (B_m, T, V), logits' dtype
        grad[:, -1].zero_()
        g = grad_out.float()  # (B_m, T-1)
        for bs, ts in _chunks(b, t1, v, ctx.chunk_elements):
            gc = g[bs, ts].unsqueeze(-1)  # (rows, 1)
            x = logits[bs, ts].to(torch.float32, copy=True)  # (rows, V) float32, a copy even for float32 logits
            x.sub_(lse[bs, ts].unsqueeze(-1)).exp_().mul_(-gc)  # -g * softmax
            x.scatter_add_(-1, targets[bs, ts].unsqueeze(-1), gc)  # + g * onehot(y)
            grad[bs, ts].copy_(x)  # cast back to logits' dtype
            del x  # free this chunk before the next one is made
        return grad, None, None


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token under `logits`, zero where `loss_mask` is 0.

    logits (B_m, T, V) predict the token at t+1 from position t; input_ids (B_m, T); loss_mask (B_m, T) is 1 on
    the tokens that are targets (response tokens and the EOS), 0 on prompt and padding. Returns (B_m, T-1) float32,
    aligned with input_ids[:, 1:].

    log pi(y_t+1 | y_<=t) = logits_t[y_t+1] - logsumexp_v logits_t[v], in float32 a chunk of at most
    LOGP_CHUNK_ELEMENTS logits at a time (`_TargetLogps`): the same values as a float32 log_softmax + gather, but
    bf16/fp16 logits are never copied whole to float32, forward or backward.
    """
    targets = input_ids[:, 1:]  # (B_m, T-1)
    mask = loss_mask[:, 1:].to(logits.dtype)
    picked = _TargetLogps.apply(logits, targets, LOGP_CHUNK_ELEMENTS)  # (B_m, T-1) float32
    return picked * mask.float()


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the response tokens (incl. EOS) of each sequence: log pi(y|x). Shape (B_m,)."""
    return token_logps(logits, input_ids, loss_mask).sum(-1)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-example SFT loss: mean token NLL over the response tokens of each example. Shape (B_m,).

    loss_i = -(1/|y_i|) sum_t log pi(y_i,t | x_i, y_i,<t). An example with no target token (cannot happen after
    the batches module's checks) would give 0, not NaN.
    """
    lp = token_logps(logits, input_ids, loss_mask)
    n = loss_mask[:, 1:].sum(-1).clamp(min=1).to(lp.dtype)
    return -lp.sum(-1) / n


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-example sigmoid DPO loss (Rafailov et al. 2023, eq. 7). All inputs (B_m,) summed log-probs.

    loss_i = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]).
    """
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    z0: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example KTO loss (Ethayarajh et al. 2024, eq. 8, as in TRL). logps, ref_logps (B_m,), desirable (B_m,) bool.

    r_i = log pi(y_i|x_i) - log ref(y_i|x_i);  z0 = the detached KL reference point (see `kto_reference_point`).
    desirable:   lambda_D * (1 - sigmoid(beta * (r_i - z0)))
    undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r_i)))
    """
    z0 = torch.as_tensor(z0, dtype=logps.dtype, device=logps.device).detach()
    r = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable.bool(), good, bad)


def kto_reference_point(kl_logratio_sum: torch.Tensor | float, kl_count: torch.Tensor | float) -> torch.Tensor:
    """KTO's z0 = max(0, mean_j [log pi(y'_j|x_j) - log ref(y'_j|x_j)]) over mismatched pairs, detached.

    The caller sums the log-ratios and counts the pairs over the whole global batch (all micro-batches, all ranks)
    so z0 does not depend on how the batch is split. The KL estimate is not weighted (docs/method.md section 1, step 7).
    """
    s = torch.as_tensor(kl_logratio_sum, dtype=torch.float32).detach()
    n = torch.as_tensor(kl_count, dtype=torch.float32).clamp(min=1)
    return (s / n).clamp(min=0.0)


def weighted_batch_loss(
    losses: torch.Tensor,
    weights: torch.Tensor,
    global_batch_size: int,
    world_size: int = 1,
    grad_accum_steps: int = 1,
) -> torch.Tensor:
    """The one reduction: the micro-batch's share of L = sum_{i in global batch} w_i * loss_i / B.

    losses, weights: (B_m,) for the examples of this micro-batch on this rank. B = `global_batch_size`, the number
    of examples in the optimizer step over all ranks and accumulation steps (a constant, not this micro-batch's
    size, so a short or padded micro-batch cannot change any example's share).

    Returns  sum_{i in micro} w_i * loss_i * (world_size * grad_accum_steps) / B.

    Why the factor: DeepSpeed divides each micro-batch loss by grad_accum_steps in `backward` and averages the
    gradients over the world_size data-parallel ranks. The gradient it applies is therefore
        (1 / world) * sum_ranks (1 / gas) * sum_micro grad[sum_i w_i loss_i * world * gas / B]
        = sum_{i in global batch} w_i * grad loss_i / B = grad L,
    which is the same for 1 rank x 16 micro-batches and 8 ranks x 2: every example contributes w_i / B whatever
    the split. With world_size = grad_accum_steps = 1 and all w_i = 1 this is sum_i loss_i / B, the plain
    (unweighted) mean over the batch, so a = 0 reproduces unweighted training exactly.
    """
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} differ in shape")
    scale = world_size * grad_accum_steps / global_batch_size
    return (weights.to(losses.dtype) * losses).sum() * scale


# ----------------------------------------------------------------------------------------------------------------
# One per-example loss per loss of schema.LOSSES, on a micro-batch of batches.micro_batch_tensors


class Logps(Protocol):
    """The model's forward: summed response log-probs (B_m,), or with `per_token_mean` the SFT loss (B_m,)."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                 per_token_mean: bool = False) -> torch.Tensor: ...


def sft_example_losses(logps: Logps, mb: dict, cfg: TrainConfig, z0: torch.Tensor | None) -> torch.Tensor:
    """Mean token NLL of each example's response."""
    return logps(mb["input_ids"], mb["attention_mask"], mb["loss_mask"], per_token_mean=True)


def dpo_example_losses(logps: Logps, mb: dict, cfg: TrainConfig, z0: torch.Tensor | None) -> torch.Tensor:
    """DPO on the micro-batch's [chosen_0..m-1, rejected_0..m-1] sequences and ref (m, 2)."""
    lp = logps(mb["input_ids"], mb["attention_mask"], mb["loss_mask"])
    ref = mb["ref"].to(lp.device)
    m = int(mb["num_examples"])
    return dpo_loss(lp[:m], lp[m:], ref[:, 0], ref[:, 1], cfg.beta)


def kto_example_losses(logps: Logps, mb: dict, cfg: TrainConfig, z0: torch.Tensor | None) -> torch.Tensor:
    """KTO on the micro-batch's responses, labels and ref[:, 0], around the global batch's z0 (needed)."""
    if z0 is None:
        raise ValueError("KTO needs the global batch's KL reference point z0 (kto_reference_point)")
    lp = logps(mb["input_ids"], mb["attention_mask"], mb["loss_mask"])
    ref = mb["ref"].to(lp.device)
    return kto_loss(lp, ref[:, 0], mb["labels"].to(lp.device), z0.to(lp.device), cfg.beta,
                    cfg.kto_desirable_weight, cfg.kto_undesirable_weight)


ExampleLoss = Callable[[Logps, dict, TrainConfig, "torch.Tensor | None"], torch.Tensor]
LOSS_FNS: dict[str, ExampleLoss] = {"sft": sft_example_losses, "dpo": dpo_example_losses, "kto": kto_example_losses}
