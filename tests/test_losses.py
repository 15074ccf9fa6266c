"""Weighted losses on hand-made tensors; expected values worked out in the comments."""

import math

import pytest
import torch

from east_ds.losses import (
    dpo_loss,
    kto_loss,
    kto_reference_point,
    sequence_logps,
    sft_loss,
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
