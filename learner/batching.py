"""Samples + tasks -> padded multimodal micro-batches, and the teacher-forced forward over them.

A ``Sample`` carries the chat prompt's token ids exactly as the rollout engine saw them and the
response tokens; the images come from its ``PromptTask``.  For each task the images are processed
once (``common.model_loading.build_prompt_inputs``: qwen-vl-utils resizing under the pixel limits,
``pixel_values``, ``image_grid_thw``) and cached; the prompt ids are the sample's own, and
``mm_token_type_ids`` is derived from them (1 on image-placeholder tokens, 2 on video ones, 0 on text
and on every response token), which is what Qwen2.5-VL's 3-D rotary positions need.  A sample whose
prompt does not carry as many image tokens as its images produce is rejected with ``BatchError``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from common.errors import LearnerError
from common.schemas import PromptTask, Sample

WAIT_RE = re.compile(r"\bwait\b", re.IGNORECASE)


class BatchError(LearnerError, ValueError):
    """A sample that cannot be turned into model inputs; the message names it."""


@dataclass
class TrainItem:
    """One response, ready for the forward pass."""

    sample_id: str
    prompt: dict[str, torch.Tensor]  # input_ids, attention_mask, mm_token_type_ids (+ pixel_values, image_grid_thw)
    completion: torch.Tensor  # int64 [L]
    sampler_logp: torch.Tensor  # float32 [L]
    advantage: float
    replayed: bool = False
    nll: bool = False  # contains a "wait" and has a positive advantage (spec 4.6)
    policy_version: int = 0
    reward: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.completion.numel())


def has_wait(sample: Sample) -> bool:
    return sample.n_wait > 0 or sample.rethought or bool(WAIT_RE.search(sample.response_text or ""))


class PromptCache:
    """Per-task processed images (bounded LRU); the learner sees ~n samples of each task."""

    def __init__(self, processor: Any, *, min_pixels: int, max_pixels: int, capacity: int = 4096) -> None:
        self.processor = processor
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.capacity = capacity
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        tok = getattr(processor, "tokenizer", processor)
        self.image_token_id = int(tok.convert_tokens_to_ids("<|image_pad|>"))
        self.video_token_id = int(tok.convert_tokens_to_ids("<|video_pad|>"))

    def vision_inputs(self, task: PromptTask) -> dict[str, torch.Tensor]:
        hit = self._cache.get(task.task_id)
        if hit is not None:
            self._cache.move_to_end(task.task_id)
            return hit
        from common.model_loading import build_prompt_inputs

        built = build_prompt_inputs(
            self.processor, task.question, list(task.images), task.prompt_suffix, self.min_pixels, self.max_pixels
        )
        entry = {k: v for k, v in built.items() if k in ("pixel_values", "image_grid_thw")}
        entry["_input_ids"] = built["input_ids"][0]
        self._cache[task.task_id] = entry
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return entry

    def prompt_inputs(self, sample: Sample, task: PromptTask) -> dict[str, torch.Tensor]:
        vis = self.vision_inputs(task)
        ids = torch.from_numpy(np.array(sample.prompt_token_ids, dtype=np.int64))
        if ids.numel() == 0:
            ids = vis["_input_ids"]
        n_img = int((ids == self.image_token_id).sum())
        expected = 0
        if "image_grid_thw" in vis:
            merge = int(getattr(self.processor.image_processor, "merge_size", 2))
            expected = int((vis["image_grid_thw"].prod(-1) // (merge * merge)).sum())
        if n_img != expected:
            raise BatchError(
                f"sample {sample.sample_id}: prompt has {n_img} image tokens but task {task.task_id}'s images give "
                f"{expected} (different pixel limits on the rollout side?)"
            )
        mm = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
        out = {"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None], "mm_token_type_ids": mm[None]}
        if "pixel_values" in vis:
            out["pixel_values"] = vis["pixel_values"]
            out["image_grid_thw"] = vis["image_grid_thw"]
        return out


def build_items(
    samples: Sequence[Sample],
    tasks: Mapping[str, PromptTask],
    cache: PromptCache,
    *,
    replayed: Sequence[bool] | None = None,
) -> tuple[list[TrainItem], list[str]]:
    """``(items, errors)``: one item per usable sample; ``errors`` explains each skipped one."""
    items: list[TrainItem] = []
    errors: list[str] = []
    for k, s in enumerate(samples):
        task = tasks.get(s.task_id)
        if task is None:
            errors.append(f"sample {s.sample_id}: task {s.task_id} missing from the batch")
            continue
        comp = torch.from_numpy(np.array(s.response_token_ids, dtype=np.int64))
        slp = torch.from_numpy(np.array(s.sampler_logprobs, dtype=np.float32))
        if comp.numel() == 0:
            errors.append(f"sample {s.sample_id}: empty response")
            continue
        if slp.numel() != comp.numel():
            errors.append(f"sample {s.sample_id}: {slp.numel()} sampler log-probs for {comp.numel()} tokens")
            continue
        try:
            prompt = cache.prompt_inputs(s, task)
        except Exception as exc:  # noqa: BLE001 - bad image / mismatch: skip this sample, keep training
            errors.append(f"{exc}")
            continue
        rep = bool(replayed[k]) if replayed is not None else False
        items.append(
            TrainItem(
                sample_id=s.sample_id,
                prompt=prompt,
                completion=comp,
                sampler_logp=slp,
                advantage=float(s.advantage),
                replayed=rep,
                nll=has_wait(s) and s.advantage > 0,
                policy_version=int(s.policy_version),
                reward=float(s.reward),
            )
        )
    return items, errors


def micro_batches(items: Sequence[TrainItem], size: int) -> list[list[TrainItem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def pad_rows(rows: Iterable[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    rows = list(rows)
    length = max(r.numel() for r in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


@dataclass
class MicroBatch:
    """Per-row and per-token tensors of one micro-batch (everything but the model's log-probs)."""

    mask: torch.Tensor  # [B, T] float32
    sampler_logp: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B]
    replayed: torch.Tensor  # [B] bool
    nll_rows: torch.Tensor  # [B] bool
    policy_versions: torch.Tensor  # [B] int64: the policy version that generated each row

    @staticmethod
    def of(items: Sequence[TrainItem], device: torch.device | str = "cpu") -> "MicroBatch":
        mask = pad_rows([torch.ones(it.num_tokens) for it in items]).to(device)
        return MicroBatch(
            mask=mask,
            sampler_logp=pad_rows([it.sampler_logp for it in items]).to(device),
            advantages=torch.tensor([it.advantage for it in items], dtype=torch.float32, device=device),
            replayed=torch.tensor([it.replayed for it in items], dtype=torch.bool, device=device),
            nll_rows=torch.tensor([it.nll for it in items], dtype=torch.bool, device=device),
            policy_versions=torch.tensor([it.policy_version for it in items], dtype=torch.int64, device=device),
        )


def forward_logprobs(model: Any, items: Sequence[TrainItem], *, pad_token_id: int | None = None) -> torch.Tensor:
    """``[B, T]`` log-probs of each item's response tokens (right-padded with 0), differentiable."""
    from common.model_loading import teacher_forced_logprobs_batch

    rows = teacher_forced_logprobs_batch(model, [(it.prompt, it.completion) for it in items], pad_token_id=pad_token_id)
    return pad_rows(rows)
