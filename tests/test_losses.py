"""Weighted losses on hand-made tensors; expected values worked out in the comments."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from east_ds.training import losses
from east_ds.training.losses import (
    dpo_loss,
    kto_loss,
    kto_reference_point,
    sequence_logps,
    sft_loss,
    token_logps,
    weighted_batch_loss,
)


def _uniform_logits(b, t, v):
    return torch.zeros(b, t, v)  # every token has probability 1/v


def test_sft_loss_masks_prompt_and_averages_response_tokens():
    # V = 4, uniform logits: every target token has NLL = log 4, so the mean over response tokens is log 4
    # whatever the number of response tokens.
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 3]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])  # targets: tokens 1..2 of row 0, tokens 2..3 of row 1
    loss = sft_loss(_uniform_logits(2, 4, 4), ids, mask)
    assert torch.allclose(loss, torch.full((2,), math.log(4)))


def test_sft_loss_exact_value_with_peaked_logits():
    # Row 0: ids [0, 1, 2], targets are tokens 1 and 2 (mask [0, 1, 1]). V = 2... use V = 3.
    # Position 0 predicts token 1 with logits [0, ln 3, 0] -> p = 3/5, NLL = ln(5/3).
    # Position 1 predicts token 2 with logits [0, 0, 0]    -> p = 1/3, NLL = ln 3.
    # mean = (ln(5/3) + ln 3) / 2 = ln(5) / 2.
    logits = torch.zeros(1, 3, 3)
    logits[0, 0, 1] = math.log(3)
    loss = sft_loss(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    assert loss.item() == pytest.approx(math.log(5) / 2, abs=1e-6)
    # The summed log-prob is -(ln(5/3) + ln 3) = -ln 5.
    lp = sequence_logps(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    assert lp.item() == pytest.approx(-math.log(5), abs=1e-6)


def test_dpo_loss_values():
    # beta = 0.5. Row 0: margin = (-1 - -2) - (-3 - -3) = 1 -> -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077.
    # Row 1: policy == reference -> margin 0 -> log 2.
    pc = torch.tensor([-1.0, -5.0])
    pr = torch.tensor([-3.0, -7.0])
    rc = torch.tensor([-2.0, -5.0])
    rr = torch.tensor([-3.0, -7.0])
    loss = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2), abs=1e-6)


def test_kto_loss_values_and_reference_point():
    # KL pairs: log-ratios 0.2 and -0.6 -> mean -0.2 -> z0 = max(0, -0.2) = 0; with 0.2 and 0.6 -> z0 = 0.4.
    assert kto_reference_point(torch.tensor(-0.4), 2).item() == 0.0
    z0 = kto_reference_point(torch.tensor(0.8), 2)
    assert z0.item() == pytest.approx(0.4)
    # beta = 1, z0 = 0.4. Desirable with r = 1.4: lambda_D (1 - sigmoid(1.0)) = 2 * 0.268941 = 0.537883.
    # Undesirable with r = -0.6: lambda_U (1 - sigmoid(0.4 - -0.6)) = 0.5 * 0.268941 = 0.134471.
    logps = torch.tensor([-1.0, -3.0])
    ref = torch.tensor([-2.4, -2.4])
    loss = kto_loss(logps, ref, torch.tensor([True, False]), z0, beta=1.0, desirable_weight=2.0,
                    undesirable_weight=0.5)
    s1 = 1 - 1 / (1 + math.exp(-1.0))
    assert loss[0].item() == pytest.approx(2 * s1, abs=1e-6)
    assert loss[1].item() == pytest.approx(0.5 * s1, abs=1e-6)
    # At the start of training (policy == reference, z0 = 0) every example has loss lambda * 0.5.
    start = kto_loss(ref, ref, torch.tensor([True, False]), 0.0, beta=0.1)
    assert torch.allclose(start, torch.tensor([0.5, 0.5]))


def test_kto_reference_point_is_detached():
    s = torch.tensor(1.0, requires_grad=True)
    assert not kto_reference_point(s * 2, 1).requires_grad


def test_weighted_batch_loss_reduction():
    # losses [1, 2, 3, 4], weights [0.5, 1, 1.5, 1] (mean 1), B = 4: sum w l / B = (0.5 + 2 + 4.5 + 4) / 4 = 2.75.
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.5, 1.0, 1.5, 1.0])
    assert weighted_batch_loss(losses, w, 4).item() == pytest.approx(2.75)
    # a = 0: all weights 1 gives exactly the unweighted mean.
    assert weighted_batch_loss(losses, torch.ones(4), 4).item() == losses.mean().item()


def test_weighted_batch_loss_is_invariant_to_the_split():
    # Simulate DeepSpeed: each micro loss is divided by gas, and the ranks' gradients are averaged.
    # 1 rank x 4 micro-batches of 1, and 2 ranks x 2 micro-batches of 1, must give sum w l / B = 2.75.
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.5, 1.0, 1.5, 1.0])

    def deepspeed_total(world, gas):
        per_rank = []
        for r in range(world):
            idx = [k for k in range(4) if k % world == r]
            per_rank.append(sum(weighted_batch_loss(losses[[k]], w[[k]], 4, world, gas) / gas for k in idx))
        return sum(per_rank) / world

    assert deepspeed_total(1, 4).item() == pytest.approx(2.75)
    assert deepspeed_total(2, 2).item() == pytest.approx(2.75)
    assert deepspeed_total(4, 1).item() == pytest.approx(2.75)


def test_weighted_batch_loss_gradient_scales_each_example_by_its_weight():
    # d/dl_i of sum w l / B = w_i / B.
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = torch.tensor([0.0, 1.0, 2.0])
    weighted_batch_loss(losses, w, 3).backward()
    assert torch.allclose(losses.grad, w / 3)


def test_weighted_batch_loss_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        weighted_batch_loss(torch.ones(3), torch.ones(2), 3)


# --- token_logps: chunked logsumexp against a float64 log_softmax + gather -------------------------------------

# Values are computed in float32 from the logits as given, whatever their dtype, so one tolerance fits all. The
# gradient comes back in the logits' dtype: it can be no closer to the float64 one than one rounding to that dtype
# (rtol), plus the float32 cancellation in g * (1 - p_target) when p_target ~ 1: a few ulp of |g| <= ~4 (atol).
_VALUE_TOL = dict(rtol=1e-5, atol=2e-5)
_GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
_GRAD_ATOL = 1e-5


def _reference_token_logps(logits64, input_ids, loss_mask):
    """The old formula, in float64: full log_softmax, gather the targets, mask. (B, T-1)."""
    logp = torch.log_softmax(logits64[:, :-1], dim=-1)
    picked = torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked * loss_mask[:, 1:].to(logits64.dtype)


def _random_case(b, t, v, dtype, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()
    return logits, ids, mask


def _check_against_float64(logits, ids, mask, seed=0):
    """token_logps values and d/dlogits (for a random upstream gradient) against the float64 reference."""
    dtype = logits.dtype
    x = logits.detach().clone().requires_grad_()
    x64 = logits.detach().to(torch.float64).requires_grad_()  # the same values, not rounded again
    out = token_logps(x, ids, mask)
    ref = _reference_token_logps(x64, ids, mask)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.detach(), **_VALUE_TOL)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, up.float())
    (grad64,) = torch.autograd.grad(ref, x64, up)
    assert grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.double(), grad64, rtol=_GRAD_RTOL[dtype], atol=_GRAD_ATOL)
    assert torch.equal(x.detach(), logits)  # the backward works on a copy of each chunk, never on the logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_token_logps_matches_float64_log_softmax_gather(dtype):
    logits, ids, mask = _random_case(3, 17, 50, dtype, seed=0)
    _check_against_float64(logits, ids, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sequence_logps_and_sft_loss_match_float64_reference(dtype):
    logits, ids, mask = _random_case(3, 17, 50, dtype, seed=1)
    x = logits.detach().clone().requires_grad_()
    x64 = logits.detach().to(torch.float64).requires_grad_()
    ref_tok = _reference_token_logps(x64, ids, mask)
    n = mask[:, 1:].sum(-1).clamp(min=1).double()
    for ours, ref in ((sequence_logps(x, ids, mask), ref_tok.sum(-1)), (sft_loss(x, ids, mask), -ref_tok.sum(-1) / n)):
        torch.testing.assert_close(ours.double(), ref.detach(), **_VALUE_TOL)
        (grad,) = torch.autograd.grad(ours.sum(), x)
        (grad64,) = torch.autograd.grad(ref.sum(), x64, retain_graph=True)
        torch.testing.assert_close(grad.double(), grad64, rtol=_GRAD_RTOL[dtype], atol=_GRAD_ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_chunk_budget_does_not_change_the_result(monkeypatch, dtype):
    # B = 3, T - 1 = 16 positions, V = 50. Budgets: below one position (1 position per chunk), 7 positions (a
    # ragged last chunk in each row), exactly one row, two rows (a ragged last chunk over the batch), more than
    # the whole tensor (one chunk). All must give bit-identical values and gradients.
    logits, ids, mask = _random_case(3, 17, 50, dtype, seed=2)
    up = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    results = []
    for budget in (1, 49, 7 * 50, 16 * 50, 32 * 50, 10**9):
        monkeypatch.setattr(losses, "LOGP_CHUNK_ELEMENTS", budget)
        x = logits.detach().clone().requires_grad_()
        out = token_logps(x, ids, mask)
        (grad,) = torch.autograd.grad(out, x, up)
        results.append((budget, out, grad))
    _, out0, grad0 = results[0]
    for budget, out, grad in results[1:]:
        assert torch.equal(out, out0), budget
        assert torch.equal(grad, grad0), budget
    _check_against_float64(logits, ids, mask)  # and the budget set last (one chunk) is right against float64


def test_chunks_cover_every_position_once():
    for b, t, v, budget in [(3, 16, 50, 1), (3, 16, 50, 7 * 50), (3, 16, 50, 32 * 50), (2, 5, 4, 10**6), (1, 0, 4, 8)]:
        seen = torch.zeros(b, t, dtype=torch.long)
        for bs, ts in losses._chunks(b, t, v, budget):
            seen[bs, ts] += 1
            assert seen[bs, ts].numel() * v <= max(budget, v)
        assert bool((seen == 1).all())


def test_token_logps_masks_and_last_position_get_zero_gradient():
    logits, ids, mask = _random_case(2, 9, 11, torch.bfloat16, seed=4)
    x = logits.detach().clone().requires_grad_()
    out = token_logps(x, ids, mask)
    assert bool((out[mask[:, 1:] == 0] == 0).all())
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert bool((grad[:, -1] == 0).all())  # the last position predicts nothing
    assert bool((grad[:, :-1][mask[:, 1:] == 0] == 0).all())  # masked targets contribute nothing
    # Each unmasked position's gradient onehot - softmax sums to 0 over the vocabulary (up to bf16 rounding).
    assert grad.float().sum(-1).abs().max().item() < 1e-2


def test_token_logps_without_grad_for_the_reference_model():
    logits, ids, mask = _random_case(2, 9, 11, torch.bfloat16, seed=5)
    with torch.no_grad():
        out = sequence_logps(logits, ids, mask)
    assert not out.requires_grad
    ref = _reference_token_logps(logits.double(), ids, mask).sum(-1)
    torch.testing.assert_close(out.double(), ref, **_VALUE_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_saves_no_dense_float32_logits_for_backward(monkeypatch, dtype):
    # Whatever autograd keeps for the backward: the logits themselves (alive anyway, in their own dtype) and
    # (B, T-1)-sized tensors. The old code kept a float32 (B, T-1, V) log_softmax; nothing float32 of more than
    # B * (T-1) elements may be saved now, nor anything else with V in it but the logits.
    b, t, v = 2, 33, 64
    monkeypatch.setattr(losses, "LOGP_CHUNK_ELEMENTS", 5 * v)
    logits, ids, mask = _random_case(b, t, v, dtype, seed=6)
    x = logits.detach().clone().requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = sft_loss(x, ids, mask)
    assert saved
    for tensor in saved:
        if tensor.numel() > b * (t - 1):  # only the logits themselves may be this big
            assert tensor.data_ptr() == x.data_ptr() and tensor.dtype == dtype, (tensor.shape, tensor.dtype)
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype


_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 9), st.integers(1, 40), _dtypes,
    st.integers(1, 500), st.integers(0, 2**16), st.floats(0.1, 20.0),
)
def test_token_logps_property_matches_float64_reference(b, t, v, dtype, budget, seed, scale):
    logits, ids, mask = _random_case(b, t, v, dtype, seed=seed, scale=scale)
    old = losses.LOGP_CHUNK_ELEMENTS
    losses.LOGP_CHUNK_ELEMENTS = budget  # hypothesis and function-scoped monkeypatch do not mix
    try:
        _check_against_float64(logits, ids, mask, seed=seed)
    finally:
        losses.LOGP_CHUNK_ELEMENTS = old


def test_loss_table_calls_each_loss_on_a_micro_batch():
    """LOSS_FNS[name](logps, micro_batch, cfg, z0) gives the loss functions' values on the micro-batch's fields:
    DPO splits [chosen..., rejected...] at num_examples, KTO takes ref[:, 0] and needs z0, SFT asks the forward for
    its per-token mean."""
    from east_ds.config import TrainConfig
    from east_ds.training.losses import LOSS_FNS

    seen = {}

    def logps(input_ids, attention_mask, loss_mask, per_token_mean=False):
        seen["per_token_mean"] = per_token_mean
        return input_ids[:, 0].float()  # each sequence's "log-prob" is its first id

    cfg = TrainConfig(beta=0.5, kto_desirable_weight=2.0, kto_undesirable_weight=3.0)
    ids = torch.tensor([[-1, 0], [-2, 0], [-3, 0], [-5, 0]])
    mb = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids),
          "ref": torch.tensor([[-1.5, -2.5], [-2.0, -4.0]]), "num_examples": torch.tensor(2),
          "labels": torch.tensor([True, False])}
    assert LOSS_FNS["sft"](logps, mb, cfg, None).tolist() == [-1, -2, -3, -5] and seen["per_token_mean"]
    dpo = LOSS_FNS["dpo"](logps, mb, cfg, None)
    assert not seen["per_token_mean"]
    assert torch.allclose(dpo, dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -5.0]),
                                        torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -4.0]), 0.5))
    one = torch.ones_like(ids[:2])
    mb_kto = {**mb, "input_ids": ids[:2], "attention_mask": one, "loss_mask": one}
    kto = LOSS_FNS["kto"](logps, mb_kto, cfg, torch.tensor(0.25))
    assert torch.allclose(kto, kto_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0]),
                                        torch.tensor([True, False]), 0.25, 0.5, 2.0, 3.0))
    with pytest.raises(ValueError, match="z0"):
        LOSS_FNS["kto"](logps, mb_kto, cfg, None)
