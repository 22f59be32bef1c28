"""Fixed, reproducible training batches without a rollout: for tests, benchmarks and smoke runs.

``synthetic_batch(model, processor, rows, ...)`` builds, for each of ``n_prompts`` data rows, a task
and ``n`` responses of random (seeded) text tokens, with the model's own teacher-forced log-probs as
sampler log-probs and group-centred rewards as advantages (A = r - mean(r), spec section 2), exactly
the shapes the buffer serves.  Nothing here is used by the training loop itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from common.data.schema import DataRow
from common.schemas import PromptTask, Sample, group_id_for, new_id


def synthetic_batch(
    model: Any,
    processor: Any,
    rows: Sequence[DataRow],
    *,
    n_prompts: int,
    n: int,
    response_len: tuple[int, int] = (6, 16),
    seed: int = 0,
    prompt_suffix: str = "",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    policy_version: int = 0,
    wait_every: int = 3,
) -> tuple[list[Sample], dict[str, PromptTask]]:
    from common.data.loader import to_prompt_task
    from common.model_loading import build_prompt_inputs, teacher_forced_logprobs_batch

    rng = np.random.default_rng(seed)
    tok = getattr(processor, "tokenizer", processor)
    # ordinary BPE tokens only (below the first added special token)
    first_special = min(int(tok.convert_tokens_to_ids(t)) for t in ("<|endoftext|>", "<|im_start|>"))
    eos = int(tok.convert_tokens_to_ids("<|im_end|>"))
    samples: list[Sample] = []
    tasks: dict[str, PromptTask] = {}
    for p in range(n_prompts):
        row = rows[p % len(rows)]
        task = to_prompt_task(row, epoch=p // max(1, len(rows)), n=n, prompt_suffix=prompt_suffix, policy_version=policy_version)
        tasks[task.task_id] = task
        pi = build_prompt_inputs(processor, task.question, list(task.images), task.prompt_suffix, min_pixels, max_pixels)
        rewards = rng.integers(0, 2, size=n).astype(np.float64)
        if rewards.min() == rewards.max():
            rewards[0] = 1.0 - rewards[0]
        adv = rewards - rewards.mean()
        comps = []
        for i in range(n):
            length = int(rng.integers(response_len[0], response_len[1] + 1))
            ids = rng.integers(3, first_special, size=length - 1).tolist() + [eos]
            comps.append(torch.tensor(ids, dtype=torch.long))
        with torch.no_grad():
            logps = teacher_forced_logprobs_batch(model, [(pi, c) for c in comps])
        for i in range(n):
            text = tok.decode(comps[i].tolist())
            has_wait = wait_every > 0 and i % wait_every == 0
            samples.append(
                Sample(
                    sample_id=new_id("s-"),
                    group_id=group_id_for(task),
                    task_id=task.task_id,
                    prompt_id=task.prompt_id,
                    prompt_token_ids=pi["input_ids"][0].numpy().astype(np.int32),
                    response_token_ids=comps[i].numpy().astype(np.int32),
                    sampler_logprobs=logps[i].float().numpy().astype(np.float32),
                    response_text=text + (" Wait" if has_wait else ""),
                    reward=float(rewards[i]),
                    correct=bool(rewards[i] > 0),
                    n_wait=1 if has_wait else 0,
                    policy_version=policy_version,
                    advantage=float(adv[i]),
                )
            )
    return samples, tasks
