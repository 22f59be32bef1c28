"""Forced Rethinking through the real engine and a real verifier process: kept, dropped for a wrong
answer, dropped for length; fixed seeds reproduce the same group."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from common.config import PROMPT_SUFFIX, RETHINK_TRIGGERS
from common.model_loading import teacher_forced_logprobs_batch
from common.schemas import PromptTask, group_id_for
from rollout_helpers import png
from services.rollout.actor import GroupBuilder
from services.rollout.engines import make_engine
from services.rollout.scoring import HttpScorer

pytestmark = pytest.mark.timeout(240)

RETHINK = (
    "algorithm.rethink.start_version=0",
    "algorithm.sampling.n=4",
    "algorithm.sampling.max_new_tokens=32",
    "algorithm.rethink.skip_prob=0.0",
    "algorithm.rethink.truncate_prob=0.0",
    "algorithm.rethink.min_continuation_tokens=2",
    "algorithm.rethink.max_continuation_tokens=40",
    "algorithm.rethink.max_candidate_tokens=40",
)


def task(i: int, answer: str) -> PromptTask:
    return PromptTask(
        task_id=f"t{i}",
        prompt_id=f"p{i}",
        question="<image>How many shapes are there?",
        answer=answer,
        images=[png((255, 0, 0))],
        prompt_suffix=PROMPT_SUFFIX,
    )


def build(cfg, verifier_url, tasks):
    async def run():
        engine = make_engine(cfg)
        await engine.start()
        scorer = HttpScorer(cfg, base_url=verifier_url)
        gb = GroupBuilder(cfg, engine, scorer, server_id="test")
        try:
            return await gb.build(tasks), gb.stats, engine
        finally:
            await scorer.close()

    return asyncio.run(run())


def test_kept_rethinking_replaces_the_original(cfg_factory, sft_model_dir, verifier_url):
    cfg = cfg_factory(*RETHINK, model_dir=sft_model_dir)
    [out], stats, engine = build(cfg, verifier_url, [task(0, "3")])
    g = out.group
    gid = group_id_for(out.task)
    assert g.group_id == gid and len(g.samples) == 4 and g.first_pass_accuracy == 1.0
    assert g.rethink_triggered == 4  # every response ended with EOS, none skipped (skip_prob 0)
    assert g.rethink_kept == 2 == sum(s.rethought for s in g.samples)  # at most 2 per prompt
    rs = stats.rethink.as_dict()
    assert rs["triggered"] == 4 and rs["kept"] == 2 and rs["dropped"] == {"over_limit": 2}
    assert rs["accuracy_before"] == 1.0 and rs["accuracy_after"] == 1.0
    tok = engine.tokenizer
    items = []
    for i, s in enumerate(g.samples):
        assert s.group_id == gid and s.task_id == "t0" and s.policy_version == 0
        assert len(s.response_token_ids) == len(s.sampler_logprobs) and np.isfinite(s.sampler_logprobs).all()
        if s.rethought:
            assert s.sample_id == f"{gid}:{i}:r"  # replaced in place, explicit id
            assert any(t in s.response_text for t in RETHINK_TRIGGERS)
            assert s.correct and s.reward == 1.0 and s.n_wait >= 1 and s.finish_reason == "stop"
            y1 = int(s.timings["y1_tokens"])
            n_trig = int(s.timings["trigger_tokens"])
            trig_text = tok.decode(s.response_token_ids[y1 : y1 + n_trig].tolist())
            assert trig_text in RETHINK_TRIGGERS
            assert s.response_text.endswith("\\boxed{3}.")
        else:
            assert s.sample_id == f"{gid}:{i}" and s.correct and s.reward == 1.0 and s.n_wait == 0
        items.append((engine.encode_prompt(out.task).tensors, s.response_token_ids.astype(np.int64)))
    # every response token, forced trigger included, has the policy's log-prob
    with torch.no_grad():
        tf = teacher_forced_logprobs_batch(engine.model, items)
    for s, lp in zip(g.samples, tf):
        np.testing.assert_allclose(lp.numpy(), s.sampler_logprobs, atol=1e-4)
    # fixed seeds: the same task gives the same group
    [again], _, _ = build(cfg, verifier_url, [task(0, "3")])
    assert [s.sample_id for s in again.group.samples] == [s.sample_id for s in g.samples]
    assert [s.response_token_ids.tolist() for s in again.group.samples] == [s.response_token_ids.tolist() for s in g.samples]


def test_wrong_continuations_are_dropped(cfg_factory, sft_model_dir, verifier_url):
    cfg = cfg_factory(*RETHINK, model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(1, "4")])  # the model always answers 3
    g = out.group
    assert g.first_pass_accuracy == 0.0 and g.rethink_triggered == 4 and g.rethink_kept == 0
    assert not any(s.rethought for s in g.samples)
    assert [s.sample_id for s in g.samples] == [f"{g.group_id}:{i}" for i in range(4)]
    assert all(s.reward == 0.0 and not s.correct for s in g.samples)
    assert stats.rethink.dropped == {"wrong_answer": 4}
    assert stats.rethink.as_dict()["accuracy_after"] == 0.0


def test_too_long_continuations_are_dropped(cfg_factory, sft_model_dir, verifier_url):
    cfg = cfg_factory(*RETHINK, "algorithm.rethink.max_continuation_tokens=6", model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(2, "3")])
    g = out.group
    assert g.rethink_triggered == 4 and g.rethink_kept == 0 and not any(s.rethought for s in g.samples)
    assert stats.rethink.dropped == {"too_long": 4}  # y2 hit the 6-token cap (len >= max is too long)
    assert all(s.correct and s.reward == 1.0 for s in g.samples)


def test_disabled_rethinking_and_bad_tasks(cfg_factory, sft_model_dir, verifier_url):
    cfg = cfg_factory(*RETHINK, "algorithm.rethink.enabled=false", model_dir=sft_model_dir)
    bad = task(4, "3")
    bad.images = [b"not a png"]
    outs, stats, _ = build(cfg, verifier_url, [task(3, "3"), bad])
    assert outs[0].group is not None and outs[0].group.rethink_triggered == 0
    assert not any(s.rethought for s in outs[0].group.samples)
    assert outs[1].group is None and "cannot encode prompt" in outs[1].error
    assert stats.rethink.triggered == 0 and stats.samples == 4


def test_rethinking_starts_at_its_start_version(cfg_factory, sft_model_dir, verifier_url):
    """Stage 2 of the recipe: groups generated by versions below `start_version` are not rethought."""
    cfg = cfg_factory(*RETHINK, "algorithm.rethink.start_version=1", model_dir=sft_model_dir)
    [out], stats, engine = build(cfg, verifier_url, [task(5, "3")])
    assert engine.loaded_version == 0
    assert out.group.rethink_triggered == 0 and stats.rethink.triggered == 0
    cfg = cfg_factory(*RETHINK, "algorithm.rethink.start_version=0", model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(5, "3")])
    assert out.group.rethink_triggered == 4 and stats.rethink.kept == 2
