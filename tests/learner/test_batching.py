"""Samples + tasks -> model inputs: position inputs (mm_token_type_ids), padding, rejection of bad samples."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from common.model_loading import build_prompt_inputs, load_model, load_processor
from learner.batching import MicroBatch, PromptCache, build_items, forward_logprobs
from learner.synthetic import synthetic_batch

PIX = dict(min_pixels=3136, max_pixels=12544)


def test_items_use_the_prompt_positions_of_the_processor(tiny_model_dir, synth_rows):
    model = load_model(tiny_model_dir)
    proc = load_processor(tiny_model_dir, **PIX)
    samples, tasks = synthetic_batch(model, proc, synth_rows, n_prompts=2, n=3, seed=1, **PIX)
    cache = PromptCache(proc, **PIX)
    items, errors = build_items(samples, tasks, cache, replayed=[False, True, False, True, False, True])
    assert errors == [] and len(items) == 6
    task = tasks[samples[0].task_id]
    ref = build_prompt_inputs(proc, task.question, list(task.images), task.prompt_suffix, **PIX)
    assert torch.equal(items[0].prompt["mm_token_type_ids"], ref["mm_token_type_ids"])
    assert int(items[0].prompt["mm_token_type_ids"].sum()) == 4  # 56x56 image -> 4 merged vision tokens
    assert [it.replayed for it in items] == [False, True] * 3
    # padded [B, T] log-probs equal the per-sample teacher-forced ones, which equal the sampler's
    with torch.no_grad():
        logp = forward_logprobs(model, items)
    mb = MicroBatch.of(items)
    assert logp.shape == mb.mask.shape
    for i, s in enumerate(samples):
        n = len(s.response_token_ids)
        assert mb.mask[i].sum() == n and (logp[i, n:] == 0).all()
        assert torch.allclose(logp[i, :n], torch.from_numpy(np.array(s.sampler_logprobs)), atol=1e-5)
    # without the position inputs the model silently computes other numbers
    pi = dict(items[0].prompt)
    pi.pop("mm_token_type_ids")
    with torch.no_grad():
        ids = torch.cat([pi["input_ids"][0], items[0].completion])[None]
        out = model(input_ids=ids, pixel_values=pi["pixel_values"], image_grid_thw=pi["image_grid_thw"])
        lp = torch.log_softmax(out.logits[0, pi["input_ids"].shape[1] - 1 : -1].float(), -1)
        wrong = lp.gather(-1, items[0].completion[:, None])[:, 0]
    assert not torch.allclose(wrong, logp[0, : items[0].num_tokens], atol=1e-4)


def test_bad_samples_are_skipped_with_a_reason(tiny_model_dir, synth_rows):
    model = load_model(tiny_model_dir)
    proc = load_processor(tiny_model_dir, **PIX)
    samples, tasks = synthetic_batch(model, proc, synth_rows, n_prompts=1, n=4, seed=2, **PIX)
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = np.array(samples[0].prompt_token_ids)
    bad_prompt = dataclasses.replace(samples[0], sample_id="s-bad-prompt", prompt_token_ids=ids[ids != image_id][:-1])
    bad_lp = dataclasses.replace(samples[1], sample_id="s-bad-lp", sampler_logprobs=np.zeros(1, np.float32))
    orphan = dataclasses.replace(samples[2], sample_id="s-orphan", task_id="nope")
    items, errors = build_items([bad_prompt, bad_lp, orphan, samples[3]], tasks, PromptCache(proc, **PIX))
    assert [it.sample_id for it in items] == [samples[3].sample_id]
    assert len(errors) == 3
    assert "s-bad-prompt" in errors[0] and "image tokens" in errors[0]
    assert "s-bad-lp" in errors[1] and "log-probs" in errors[1]
    assert "s-orphan" in errors[2] and "missing" in errors[2]
