"""One learner step: the micro-batch plan of full and short batches, the off-policy correction of
on-policy, stale-fresh and replayed rows in one batch, the NLL rows, and gradients reaching the
vision tower when it is trained.  Real DeepSpeed engines on the tiny model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from learner.batching import MicroBatch, TrainItem, has_wait
from learner.loss import LossConfig
from learner.step import behaviour_inputs, off_policy_rows, plan_micro_batches


def test_plan_deals_items_evenly_over_every_slot():
    assert plan_micro_batches(8, world=1, grad_accum=2, micro_batch_size=4) == [(0, 4), (4, 8)]
    assert plan_micro_batches(8, world=2, grad_accum=1, micro_batch_size=4) == [(0, 4), (4, 8)]
    assert plan_micro_batches(5, world=1, grad_accum=2, micro_batch_size=4) == [(0, 3), (3, 5)]
    assert plan_micro_batches(1, world=1, grad_accum=2, micro_batch_size=4) == [(0, 1), (1, 1)]
    assert plan_micro_batches(3, world=2, grad_accum=2, micro_batch_size=2) == [(0, 1), (1, 2), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="exceed"):
        plan_micro_batches(9, world=1, grad_accum=2, micro_batch_size=4)


def _mb(versions, replayed, sampler, own):
    b = len(versions)
    mask = torch.ones(b, own.shape[1])
    return MicroBatch(
        mask=mask,
        sampler_logp=sampler,
        advantages=torch.ones(b),
        replayed=torch.tensor(replayed),
        nll_rows=torch.zeros(b, dtype=torch.bool),
        policy_versions=torch.tensor(versions),
    )


def test_every_off_policy_row_is_corrected_by_the_configured_rule():
    # rows: on-policy (version 5 = learner's), stale fresh (version 3), replayed (version 4)
    own = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])
    sampler = own - 0.3  # the sampler gave every token 0.3 nats less
    b = _mb([5, 3, 4], [False, False, True], sampler, own)
    off = off_policy_rows(b, version=5)
    assert off.tolist() == [False, True, True]
    assert off_policy_rows(b, version=None).tolist() == [False, False, True]  # no version: replay only

    old, w = behaviour_inputs(own, b, off, LossConfig(off_policy="behaviour"))
    assert w is None
    assert torch.equal(old[0], own[0]) and torch.equal(old[1:], sampler[1:])

    old, w = behaviour_inputs(own, b, off, LossConfig(off_policy="decoupled", is_cap=5.0))
    assert torch.equal(old, own)
    assert torch.equal(w[0], torch.ones(2)) and torch.allclose(w[1:], torch.full((2, 2), math.exp(0.3)))
    _, w = behaviour_inputs(own, b, off, LossConfig(off_policy="decoupled", is_cap=1.2))
    assert torch.allclose(w[1:], torch.full((2, 2), 1.2))  # truncated importance weight

    old, w = behaviour_inputs(own, b, off, LossConfig(off_policy="recompute"))
    assert torch.equal(old, own) and w is None


def _item(sample_id: str, *, advantage: float, text_wait: bool, rethought: bool = False):
    from common.schemas import Sample

    import numpy as np

    s = Sample(
        sample_id=sample_id, group_id="g", task_id="t", prompt_id="p",
        prompt_token_ids=np.arange(3, dtype=np.int32), response_token_ids=np.arange(3, dtype=np.int32),
        sampler_logprobs=np.zeros(3, dtype=np.float32),
        response_text="so it is 3. Wait, let me check." if text_wait else "so it is 3.",
        rethought=rethought, advantage=advantage,
    )
    return s


def test_nll_rows_are_the_positive_advantage_responses_with_a_wait():
    from learner.batching import build_items

    class Cache:
        def prompt_inputs(self, sample, task):
            return {"input_ids": torch.zeros(1, 3, dtype=torch.long)}

    cases = {
        "wait+": (_item("a", advantage=0.5, text_wait=True), True),
        "wait-": (_item("b", advantage=-0.5, text_wait=True), False),
        "wait0": (_item("c", advantage=0.0, text_wait=True), False),
        "plain+": (_item("d", advantage=0.5, text_wait=False), False),
        "rethought+": (_item("e", advantage=0.25, text_wait=False, rethought=True), True),  # a forced trigger
    }
    samples = [s for s, _ in cases.values()]
    items, errors = build_items(samples, {"t": object()}, Cache())
    assert not errors
    assert {it.sample_id: it.nll for it in items} == {s.sample_id: want for s, want in cases.values()}
    assert has_wait(dataclasses.replace(samples[3], n_wait=1))  # the verifier's wait count counts too


@pytest.fixture
def batch_items(make_cfg, synth_rows):
    """A function ``(policy, n, **kw) -> items`` of n rows of one synthetic group of 8 (replayed rows
    keep their sampler log-probs)."""
    from common.model_loading import load_processor
    from learner.batching import PromptCache, build_items
    from learner.synthetic import synthetic_batch

    def make(policy, n: int, *, policy_version: int = 0, replayed: bool = False, seed: int = 0) -> list[TrainItem]:
        proc = load_processor(policy.model_path, min_pixels=3136, max_pixels=12544)
        samples, tasks = synthetic_batch(policy.module, proc, synth_rows, n_prompts=1, n=8, seed=seed,
                                         min_pixels=3136, max_pixels=12544, policy_version=policy_version)
        items, errors = build_items(samples[:n], tasks, PromptCache(proc, min_pixels=3136, max_pixels=12544),
                                    replayed=[replayed] * n)
        assert not errors
        return items

    return make


def test_a_short_batch_trains_as_the_mean_of_its_filled_micro_batches(make_cfg, batch_items):
    """One row in a step of two micro-batch slots gives exactly the update of that row alone in a
    step of one slot: the empty slot adds nothing and the DeepSpeed accumulation scale is undone."""
    from learner.policy_model import PolicyModel
    from learner.step import train_step

    two = PolicyModel(make_cfg())  # 8 rows per step in 2 micro-batches of 4
    one = PolicyModel(make_cfg("learner.micro_batch_size=8"))  # 8 rows per step in 1 micro-batch
    assert (two.grad_accum, one.grad_accum) == (2, 1)
    lcfg = LossConfig.from_grpo(make_cfg().algorithm.grpo)
    items = batch_items(two, 1)
    s2 = train_step(two, items, lcfg, version=0)
    s1 = train_step(one, items, lcfg, version=0)
    assert s2["rows"] == s1["rows"] == 1
    assert s2["grad_norm"] > 0 and s2["grad_norm"] == pytest.approx(s1["grad_norm"], rel=1e-5)
    assert s2["loss"] == pytest.approx(s1["loss"], rel=1e-6)
    p2, p1 = dict(two.module.named_parameters()), dict(one.module.named_parameters())
    assert all(torch.allclose(p2[n], p1[n], atol=1e-7) for n in p2)
    # a short batch of 3 rows: 2 + 1 over the two slots, each a token mean, nothing repeated
    s3 = train_step(two, batch_items(two, 3, seed=1), lcfg, version=1)
    assert s3["rows"] == 3 and math.isfinite(s3["loss"])


def test_a_batch_mixing_on_policy_stale_and_replayed_rows(make_cfg, batch_items):
    from learner.policy_model import PolicyModel
    from learner.step import train_step

    cfg = make_cfg("learner.micro_batch_size=8")
    policy = PolicyModel(cfg)
    on = batch_items(policy, 3, policy_version=4)
    stale = batch_items(policy, 3, policy_version=2, seed=1)
    replay = batch_items(policy, 2, policy_version=1, replayed=True, seed=2)
    for it in stale + replay:  # the behaviour policy differed from the learner's by 0.2 nats per token
        it.sampler_logp = it.sampler_logp - 0.2
    items = on + stale + replay
    base = LossConfig.from_grpo(cfg.algorithm.grpo)
    st = {}
    for mode in ("behaviour", "decoupled", "recompute"):
        st[mode] = train_step(PolicyModel(cfg), items, dataclasses.replace(base, off_policy=mode), version=4)
        assert st[mode]["off_policy_share"] == pytest.approx(5 / 8)
    tokens = lambda rows: sum(it.num_tokens for it in rows)  # noqa: E731
    share_off = tokens(stale + replay) / tokens(items)
    # behaviour: the ratio of off-policy tokens is e^0.2 against the sampler, 1 on on-policy rows
    assert st["behaviour"]["ratio_mean"] == pytest.approx(1 + share_off * (math.exp(0.2) - 1), rel=1e-4)
    # decoupled: ratio 1 everywhere, off-policy tokens weighted by e^0.2
    assert st["decoupled"]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert st["decoupled"]["is_weight_mean"] == pytest.approx(1 + share_off * (math.exp(0.2) - 1), rel=1e-4)
    # recompute: no correction at all
    assert st["recompute"]["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and "is_weight_mean" not in st["recompute"]
    assert st["behaviour"]["loss"] != pytest.approx(st["recompute"]["loss"])


def test_gradients_reach_the_vision_tower_when_it_is_trained(make_cfg, batch_items):
    from learner.policy_model import PolicyModel, is_vision_param
    from learner.step import train_step

    policy = PolicyModel(make_cfg("learner.freeze_vision=false"))
    before = {n: p.detach().clone() for n, p in policy.module.named_parameters() if is_vision_param(n)}
    assert before and all(p.requires_grad for n, p in policy.module.named_parameters() if is_vision_param(n))
    st = train_step(policy, batch_items(policy, 8), LossConfig.from_grpo(policy.cfg.algorithm.grpo), version=0)
    assert st["grad_norm"] > 0
    after = dict(policy.module.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert len(moved) >= len(before) - 1, sorted(set(before) - set(moved))
