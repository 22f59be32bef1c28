"""Supervised warm-up on the learner's policy: NLL on chosen completion texts, then a model folder.

``warmup(cfg, steps=50, out_dir=...)`` trains ``steps`` optimizer steps of token-mean NLL on
(prompt, completion) pairs built from the training rows and writes a transformers model folder
(``learner.checkpoint.export_hf``) that the RL learner and the rollout servers then start from
(``model.path``).  The default completion is a format-only answer, ``"The answer is \\boxed{X}."``
with a letter X drawn at random (seeded) among A-D: it teaches the answer format and carries no
image information, so accuracy stays near chance (the CPU demo's warm-up).  Pass
``completion_fn(row, rng) -> str`` for another text.

Same DeepSpeed setup as RL (ZeRO, precision, micro-batches of ``micro_batch_size``), with a constant
learning rate (``lr``, default ``learner.lr``) and ``samples_per_step`` pairs per step.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from common.config import RethinkerConfig
from common.logging import get_logger
from learner.batching import TrainItem, forward_logprobs, micro_batches, pad_rows
from learner.policy_model import PolicyModel, samples_per_step
from learner.step import rank_slice

log = get_logger("learner.sft")

CompletionFn = Callable[[Any, random.Random], str]


def format_only_completion(row: Any, rng: random.Random) -> str:
    return f"The answer is \\boxed{{{rng.choice('ABCD')}}}."


def sft_items(
    rows: Sequence[Any], processor: Any, cfg: RethinkerConfig, *, completion_fn: CompletionFn, seed: int
) -> list[TrainItem]:
    from common.data.loader import to_prompt_task
    from common.model_loading import build_prompt_inputs

    tok = getattr(processor, "tokenizer", processor)
    eos = int(tok.convert_tokens_to_ids("<|im_end|>"))
    rng = random.Random(seed)
    items = []
    for row in rows:
        task = to_prompt_task(row, prompt_suffix=cfg.data.prompt_suffix)
        prompt = build_prompt_inputs(
            processor, task.question, list(task.images), task.prompt_suffix, cfg.data.min_pixels, cfg.data.max_pixels
        )
        ids = tok(completion_fn(row, rng), add_special_tokens=False)["input_ids"] + [eos]
        comp = torch.tensor(ids, dtype=torch.long)
        items.append(
            TrainItem(sample_id=f"sft-{row.qid}", prompt=prompt, completion=comp, sampler_logp=torch.zeros(len(ids)),
                      advantage=0.0, nll=True)
        )
    return items


def warmup(
    cfg: RethinkerConfig,
    *,
    steps: int,
    out_dir: str | Path,
    completion_fn: CompletionFn = format_only_completion,
    rows: Sequence[Any] | None = None,
    lr: float | None = None,
) -> Path | None:
    """Train ``steps`` NLL steps and export the model to ``out_dir`` (returned on rank 0)."""
    from common.model_loading import load_processor
    from learner.checkpoint import export_hf
    from learner.trainer import load_training_rows

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    c = cfg.model_copy(deep=True)
    c.learner.total_steps = max(1, steps)
    c.learner.warmup_ratio = 0.0
    c.learner.min_lr_ratio = 1.0
    if lr is not None:
        c.learner.lr = lr
    policy = PolicyModel(c, with_reference=False)
    processor = load_processor(policy.model_path, min_pixels=c.data.min_pixels, max_pixels=c.data.max_pixels)
    if rows is None:
        rows = load_training_rows(c, processor)
    items = sft_items(rows, processor, c, completion_fn=completion_fn, seed=c.run.seed)
    n = samples_per_step(c)
    order = random.Random(c.run.seed)
    t0 = time.perf_counter()
    for step in range(steps):
        batch = [items[i] for i in (order.randrange(len(items)) for _ in range(n))]
        mine = rank_slice(batch, policy.rank, policy.world)
        total, tokens = 0.0, 0.0
        for mb in micro_batches(mine, c.learner.micro_batch_size):
            logp = forward_logprobs(policy.model_for_forward, mb, pad_token_id=policy.pad_token_id)
            mask = pad_rows([torch.ones(it.num_tokens) for it in mb]).to(logp.device)
            loss = (-logp * mask).sum() / mask.sum()
            policy.backward(loss)
            policy.micro_step()
            total += float(loss.detach()) * float(mask.sum())
            tokens += float(mask.sum())
        if policy.rank == 0 and (step % 10 == 0 or step == steps - 1):
            log.info("sft_step", step=step + 1, nll=round(total / max(tokens, 1.0), 4), grad_norm=policy.grad_norm(),
                     seconds=round(time.perf_counter() - t0, 2))
    return export_hf(policy, out_dir, version=0, step=0)
