"""One learner step on a list of ``TrainItem``s: micro-batches, forward, GRPO loss, backward, AdamW.

The items of a step are split evenly over the data-parallel ranks (rank ``r`` takes the ``r``-th
contiguous slice), then into micro-batches of ``learner.micro_batch_size``; each rank runs exactly
``grad_accum`` micro-batches and DeepSpeed steps the optimizer (with clipping and the schedule) at
the accumulation boundary.  A 1-rank run with 2 micro-batches and a 2-rank run with 1 micro-batch
each therefore see the same micro-batches and produce the same update.

Behaviour log-probs: replayed items use their stored ``sampler_logp``; fresh items use the learner's
own log-probs, recomputed in the same forward (``logp.detach()``): there is exactly one optimizer step
per batch, so a separate no-grad pass before the update would produce the same numbers.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from learner.batching import MicroBatch, TrainItem, forward_logprobs, micro_batches
from learner.loss import LossConfig, grpo_loss


def rank_slice(items: Sequence[TrainItem], rank: int, world: int) -> list[TrainItem]:
    if len(items) % world:
        raise ValueError(f"{len(items)} items cannot be split evenly over {world} ranks")
    per = len(items) // world
    return list(items[rank * per : (rank + 1) * per])


def _reference_logprobs(ref_model: Any, items: Sequence[TrainItem], pad_token_id: int) -> torch.Tensor:
    with torch.no_grad():
        return forward_logprobs(ref_model, items, pad_token_id=pad_token_id)


def train_step(engine: Any, items: Sequence[TrainItem], loss_cfg: LossConfig) -> dict[str, float]:
    """Run one optimizer step over ``items`` (all ranks' items; this rank takes its slice).

    ``engine`` is a ``learner.engine.PolicyEngine``.  Returns token-weighted means of the loss stats
    of this rank plus ``grad_norm``, ``lr``, ``tokens``, ``seconds``.
    """
    t0 = time.perf_counter()
    mine = rank_slice(items, engine.rank, engine.world)
    mbs = micro_batches(mine, engine.cfg.learner.micro_batch_size)
    if len(mbs) != engine.grad_accum:
        raise ValueError(f"{len(mbs)} micro-batches on rank {engine.rank}, DeepSpeed expects {engine.grad_accum}")
    sums: dict[str, float] = {}
    tokens = 0.0
    loss_sum = 0.0
    model = engine.model_for_forward
    for mb in mbs:
        logp = forward_logprobs(model, mb, pad_token_id=engine.pad_token_id)
        b = MicroBatch.of(mb, device=logp.device)
        old = torch.where(b.replayed[:, None], b.sampler_logp, logp.detach())
        ref = None
        if engine.reference is not None and loss_cfg.kl_coef:
            ref = _reference_logprobs(engine.reference, mb, engine.pad_token_id).to(logp.device, logp.dtype)
        loss, st = grpo_loss(
            logp,
            old,
            b.advantages,
            b.mask,
            cfg=loss_cfg,
            stale=b.replayed,
            nll_rows=b.nll_rows,
            ref_logp=ref,
            sampler_logp=b.sampler_logp,
        )
        engine.backward(loss)
        engine.micro_step()
        n = st["tokens"]
        tokens += n
        loss_sum += float(loss.detach()) * n
        for k, v in st.items():
            if k != "tokens":
                sums[k] = sums.get(k, 0.0) + v * n
    if engine.world > 1:  # token-weighted means over every rank's micro-batches
        import torch.distributed as dist

        keys = sorted(sums)
        t = torch.tensor([tokens, loss_sum, *[sums[k] for k in keys]], dtype=torch.float64)
        dist.all_reduce(t)
        tokens, loss_sum = float(t[0]), float(t[1])
        sums = {k: float(v) for k, v in zip(keys, t[2:].tolist())}
    out = {k: v / max(tokens, 1.0) for k, v in sums.items()}
    out["loss"] = loss_sum / max(tokens, 1.0)
    out["tokens"] = tokens
    out["grad_norm"] = engine.grad_norm()
    out["lr"] = engine.lr()
    out["seconds"] = time.perf_counter() - t0
    return out
