"""The GRPO objective of VL-Rethinker (spec section 2 and 4.6), on padded token tensors.

All tensors are ``[B, T]`` (rows = responses, columns = response tokens, right-padded) except the
per-row ones (``[B]``).  For every response token::

    ratio   = exp(logp - old_logp)
    pg      = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))   # clip-higher PPO
    pg      = min(pg, -A * is_cap)         only on ``stale`` rows with A < 0 (dual clip: the importance
                                           weight of an off-policy token never counts above is_cap)
    pg      = w * pg                       with a per-token importance weight ``is_weight`` (decoupled
                                           PPO: w = min(pi_learner / pi_sampler, is_cap), detached)
    loss    = token_mean(pg) + nll_coef * token_mean_over_nll_rows(-logp) + kl_coef * token_mean(k3(ref, logp))

``old_logp`` is the old policy of the clipped ratio; which log-probs that is for on-policy,
stale and replayed rows is decided by ``algorithm.grpo.off_policy`` (learner/step.py).  "token_mean" is the
mean over every response token of the micro-batch (spec: token-level mean over the micro-batch).
The NLL term covers responses that contain a "wait" and have a positive advantage (spec 4.6); its
mean is over those responses' tokens (0 when there is none).  The reference KL uses the k3
estimator ``exp(ref - logp) - (ref - logp) - 1`` (only with ``kl_coef > 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import GRPOConfig


@dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.35
    is_cap: float | None = 5.0
    nll_coef: float = 0.05
    kl_coef: float = 0.0
    off_policy: str = "behaviour"  # behaviour | decoupled | recompute (learner/step.py)

    @staticmethod
    def from_grpo(grpo: GRPOConfig) -> "LossConfig":
        return LossConfig(grpo.clip_low, grpo.clip_high, grpo.is_cap, grpo.nll_coef, grpo.kl_coef, grpo.off_policy)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    denom = mask.sum()
    return (x * mask).sum() / denom.clamp(min=1.0)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: LossConfig,
    stale: torch.Tensor | None = None,
    is_weight: torch.Tensor | None = None,
    nll_rows: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Returns ``(loss, stats)``; ``stats`` are plain floats for logging (token means)."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, mask {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None].expand_as(logp)
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg1 = -adv * ratio
    pg2 = -adv * clipped
    pg = torch.maximum(pg1, pg2)
    capped = torch.zeros_like(mask, dtype=torch.bool)
    if cfg.is_cap is not None and stale is not None:
        stale_tok = stale.to(torch.bool)[:, None].expand_as(logp)
        cap_value = -adv * cfg.is_cap
        capped = stale_tok & (adv < 0) & (pg > cap_value)
        pg = torch.where(capped, cap_value, pg)
    if is_weight is not None:
        if is_weight.shape != logp.shape:
            raise ValueError(f"is_weight must be {tuple(logp.shape)}, got {tuple(is_weight.shape)}")
        pg = pg * is_weight.detach().to(pg.dtype)
    pg_loss = _masked_mean(pg, mask)
    loss = pg_loss

    stats: dict[str, float] = {}
    nll_loss = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if cfg.nll_coef and nll_rows is not None and bool(nll_rows.any()):
        nll_mask = mask * nll_rows.to(mask.dtype)[:, None]
        nll_loss = _masked_mean(-logp, nll_mask)
        loss = loss + cfg.nll_coef * nll_loss
    kl_ref = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if cfg.kl_coef and ref_logp is not None:
        d = ref_logp.detach() - logp
        kl_ref = _masked_mean(torch.exp(d) - d - 1.0, mask)
        loss = loss + cfg.kl_coef * kl_ref

    with torch.no_grad():
        n_tok = float(mask.sum().clamp(min=1.0))
        stats["pg_loss"] = float(pg_loss)
        stats["nll_loss"] = float(nll_loss)
        stats["kl_ref"] = float(kl_ref)
        stats["clip_frac"] = float(((pg2 > pg1).to(mask.dtype) * mask).sum() / n_tok)
        stats["cap_frac"] = float((capped.to(mask.dtype) * mask).sum() / n_tok)
        # k3 estimate of KL(behaviour || current) on the behaviour's tokens
        stats["approx_kl"] = float(_masked_mean(ratio - 1.0 - log_ratio, mask))
        stats["ratio_mean"] = float(_masked_mean(ratio, mask))
        stats["ratio_max"] = float((ratio * mask).max()) if mask.any() else 1.0
        if is_weight is not None:
            stats["is_weight_mean"] = float(_masked_mean(is_weight.to(mask.dtype), mask))
        if sampler_logp is not None:
            ls = logp.detach() - sampler_logp
            stats["approx_kl_sampler"] = float(_masked_mean(torch.exp(ls) - 1.0 - ls, mask))
        stats["tokens"] = float(mask.sum())
    return loss, stats
