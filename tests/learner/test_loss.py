"""GRPO loss against hand-computed values: clip-higher, masking, token mean, dual-clip cap, NLL, KL."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import LossConfig, grpo_loss

CFG = LossConfig(clip_low=0.2, clip_high=0.35, is_cap=5.0, nll_coef=0.05, kl_coef=0.0)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_clip_higher_and_masking_match_hand_values():
    logp = _t([[-1.0, -2.0, -0.5, -0.1], [-1.0, -1.5, -9.0, -9.0]]).requires_grad_(True)
    old = _t([[-1.2, -1.5, -0.5, -0.6], [-0.5, -1.5, 0.0, 0.0]])
    adv = _t([1.0, -2.0])
    mask = _t([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 has 2 tokens; padding must not count
    loss, st = grpo_loss(logp, old, adv, mask, cfg=CFG)
    # row 0 (A=+1): ratios e^0.2=1.2214 (inside), e^-0.5=0.6065 (below 0.8, but A>0 keeps the
    # unclipped -A*r because it is larger), 1, e^0.5=1.6487 (above 1.35 -> clipped to -1.35)
    r00, r01, r03 = math.exp(0.2), math.exp(-0.5), math.exp(0.5)
    row0 = [-r00, -r01, -1.0, -1.35]
    # row 1 (A=-2): e^-0.5=0.6065 -> clipped up to 0.8 -> 2*0.8=1.6 (larger than 2*0.6065), ratio 1 -> 2
    row1 = [1.6, 2.0]
    expected = (sum(row0) + sum(row1)) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert st["clip_frac"] == pytest.approx(2 / 6)  # tokens (0,3) and (1,0) use the clipped term
    assert st["tokens"] == 6
    loss.backward()
    g = logp.grad
    # unclipped tokens: d(-A r)/dlogp = -A r, over 6 tokens; clipped and padded tokens: 0
    assert g[0, 0].item() == pytest.approx(-r00 / 6)
    assert g[0, 1].item() == pytest.approx(-r01 / 6)
    assert g[0, 2].item() == pytest.approx(-1 / 6)
    assert g[0, 3].item() == 0.0
    assert g[1, 0].item() == 0.0
    assert g[1, 1].item() == pytest.approx(2 / 6)
    assert g[1, 2].item() == 0.0 and g[1, 3].item() == 0.0
    # k3 KL to the behaviour policy over the 6 tokens
    lr = [0.2, -0.5, 0.0, 0.5, -0.5, 0.0]
    assert st["approx_kl"] == pytest.approx(sum(math.exp(x) - 1 - x for x in lr) / 6)


def test_fresh_samples_with_recomputed_logprobs_give_the_plain_policy_gradient():
    logp = _t([[-0.3, -0.7, -1.1]]).requires_grad_(True)
    adv = _t([0.5])
    loss, st = grpo_loss(logp, logp.detach(), adv, torch.ones(1, 3, dtype=torch.float64), cfg=CFG)
    assert loss.item() == pytest.approx(-0.5)
    assert st["clip_frac"] == 0 and st["approx_kl"] == 0
    loss.backward()
    assert torch.allclose(logp.grad, torch.full((1, 3), -0.5 / 3, dtype=torch.float64))


def test_importance_weight_cap_applies_to_stale_negative_rows_only():
    # ratio e^3 = 20.1 on every token; rows: stale A<0, fresh A<0, stale A>0
    logp = _t([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).requires_grad_(True)
    old = _t([[-3.0, -3.0], [-3.0, -3.0], [-3.0, -3.0]])
    adv = _t([-1.0, -1.0, 1.0])
    stale = torch.tensor([True, False, True])
    mask = torch.ones(3, 2, dtype=torch.float64)
    loss, st = grpo_loss(logp, old, adv, mask, cfg=CFG, stale=stale)
    r = math.exp(3.0)
    # stale A<0: min(max(r, 1.35), 5) = 5 (capped, no gradient); fresh A<0: r; stale A>0: -1.35 (clipped)
    assert loss.item() == pytest.approx((2 * 5.0 + 2 * r + 2 * -1.35) / 6)
    assert st["cap_frac"] == pytest.approx(2 / 6)
    loss.backward()
    assert logp.grad[0].abs().sum().item() == 0.0
    assert logp.grad[1, 0].item() == pytest.approx(r / 6)
    assert logp.grad[2].abs().sum().item() == 0.0
    # without a cap the stale row counts with its full ratio
    loss2, _ = grpo_loss(logp.detach(), old, adv, mask, cfg=LossConfig(is_cap=None), stale=stale)
    assert loss2.item() == pytest.approx((4 * r + 2 * -1.35) / 6)


def test_nll_term_on_positive_wait_rows_and_reference_kl():
    logp = _t([[-1.0, -3.0, 0.0], [-2.0, -2.0, -2.0]]).requires_grad_(True)
    adv = _t([1.0, 1.0])
    mask = _t([[1, 1, 0], [1, 1, 1]])
    nll_rows = torch.tensor([True, False])
    ref = _t([[-1.5, -3.0, 0.0], [-2.0, -1.0, -2.0]])
    cfg = LossConfig(nll_coef=0.05, kl_coef=0.1)
    loss, st = grpo_loss(logp, logp.detach(), adv, mask, cfg=cfg, nll_rows=nll_rows, ref_logp=ref)
    pg = -1.0  # ratio 1 everywhere, A = 1
    nll = (1.0 + 3.0) / 2  # only row 0's two real tokens
    d = [-0.5, 0.0, 0.0, 1.0, 0.0]
    kl = sum(math.exp(x) - x - 1 for x in d) / 5
    assert st["nll_loss"] == pytest.approx(nll)
    assert st["kl_ref"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(pg + 0.05 * nll + 0.1 * kl)
    # no NLL row -> no NLL term
    loss0, st0 = grpo_loss(logp.detach(), logp.detach(), adv, mask, cfg=cfg, nll_rows=torch.tensor([False, False]))
    assert st0["nll_loss"] == 0.0 and loss0.item() == pytest.approx(-1.0)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3), cfg=CFG)
