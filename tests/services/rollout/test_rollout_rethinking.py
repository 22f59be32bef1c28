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


def build(cfg, verifier_url, tasks, engine_cls=None):
    """GroupBuilder.build of ``tasks`` with the config's engine (or ``engine_cls(cfg)``) and a real verifier."""

    async def run():
        engine = make_engine(cfg) if engine_cls is None else engine_cls(cfg)
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


# --------------------------------------------------------------------------- engine spies

class RecordingHF:
    """Mixin for the real hf engine: records the transformers generation config of every row it
    generates (continuation or first pass), so a test sees what reached the model's sampler."""

    def _generate_sync(self, requests, version):
        self.seen = getattr(self, "seen", [])
        for r in requests:
            gc = self._gen_config_for(r.params)
            self.seen.append((r.prefix_token_ids is not None, gc.do_sample, gc.temperature, r.params.max_new_tokens))
        return super()._generate_sync(requests, version)


def scripted_continuations(text: str, *, eos: bool = True):
    """The real hf engine whose continuations (y2) are replaced by ``text`` (+ EOS): the tiny model
    always answers 3, and some tests need a continuation that says something else.  First passes
    and the prefix log-probs of every continuation stay the engine's own."""
    import dataclasses as dc

    from services.rollout.engines.base import Completion, as_int32
    from services.rollout.engines.hf import HFEngine

    class Scripted(RecordingHF, HFEngine):
        async def _generate(self, requests):
            results = await super()._generate(requests)
            out = []
            for r, res in zip(requests, results):
                if r.prefix_token_ids is None:
                    out.append(res)
                    continue
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
                if eos:
                    ids.append(min(self.eos_token_ids))
                tok = as_int32(ids)
                comps = [Completion(tok, np.full(len(tok), -0.5, dtype=np.float32), "stop" if eos else "length",
                                    self.decode(tok), c.policy_version) for c in res.completions]
                out.append(dc.replace(res, completions=comps))
            return out

    return Scripted


def test_the_continuation_temperature_reaches_the_engine(cfg_factory, sft_model_dir, verifier_url):
    from services.rollout.engines.hf import HFEngine

    class Recording(RecordingHF, HFEngine):
        pass

    cfg = cfg_factory(*RETHINK, "algorithm.rethink.temperature=0.9", "algorithm.sampling.temperature=1.0",
                      model_dir=sft_model_dir)
    [out], stats, engine = build(cfg, verifier_url, [task(6, "3")], Recording)
    assert stats.rethink.triggered == 4
    first = {(s, t, m) for cont, s, t, m in engine.seen if not cont}
    cont = {(s, t, m) for c, s, t, m in engine.seen if c}
    assert first == {(True, 1.0, 32)}
    assert cont == {(True, 0.9, 40)}  # sampled at the rethinking temperature, up to max_continuation_tokens


def test_the_keep_rule_counts_generated_tokens_without_eos(cfg_factory, sft_model_dir, verifier_url):
    from common.model_loading import load_processor

    text = " so it is \\boxed{3}."

    k = len(load_processor(str(sft_model_dir)).tokenizer.encode(text, add_special_tokens=False))
    # y2 is k generated tokens + EOS: kept when k > min, too short when k == min (EOS not counted)
    cfg = cfg_factory(*RETHINK, f"algorithm.rethink.min_continuation_tokens={k}", model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(7, "3")], scripted_continuations(text))
    assert out.group.rethink_kept == 0 and stats.rethink.dropped == {"too_short": 4}
    cfg = cfg_factory(*RETHINK, f"algorithm.rethink.min_continuation_tokens={k - 1}", model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(7, "3")], scripted_continuations(text))
    assert out.group.rethink_kept == 2
    # and the upper bound: k tokens + EOS is kept under max = k + 1 (k + 1 would be too long if EOS counted)
    cfg = cfg_factory(*RETHINK, f"algorithm.rethink.min_continuation_tokens={k - 1}",
                      f"algorithm.rethink.max_continuation_tokens={k + 1}", model_dir=sft_model_dir)
    [out], stats, _ = build(cfg, verifier_url, [task(7, "3")], scripted_continuations(text))
    assert out.group.rethink_kept == 2 and "too_long" not in stats.rethink.dropped


def test_a_wrong_to_right_rethinking_changes_the_stored_advantages(cfg_factory, sft_model_dir, verifier_url):
    """Gold 4, the model answers 3 (all wrong: zero advantage); two continuations retract and answer
    4: they replace their originals, and the buffer's advantages follow the new rewards."""
    from services.buffer.client import BufferClient

    engine_cls = scripted_continuations(" no, the count is 4. The answer is \\boxed{4}.")
    off = cfg_factory(*RETHINK, "algorithm.rethink.enabled=false", model_dir=sft_model_dir)
    [plain], _, _ = build(off, verifier_url, [task(8, "4")], engine_cls)
    on = cfg_factory(*RETHINK, model_dir=sft_model_dir)
    [rethought], stats, _ = build(on, verifier_url, [task(8, "4")], engine_cls)
    assert [s.reward for s in plain.group.samples] == [0.0] * 4
    g = rethought.group
    assert g.rethink_kept == 2 and stats.rethink.y2_correct == 4
    assert [s.rethought for s in g.samples] == [True, True, False, False]
    assert [s.reward for s in g.samples] == [1.0, 1.0, 0.0, 0.0]
    with BufferClient(off) as buf:
        res_plain = buf.add_group(plain.group)
    with BufferClient(on) as buf:
        res = buf.add_group(g)
        stored = buf.get_group(g.group_id)
    assert res_plain.n_effective == 0 and res_plain.advantages == [0.0] * 4
    assert res.n_effective == 4 and res.advantages == pytest.approx([0.5, 0.5, -0.5, -0.5])
    assert [s.sample_id for s in stored.samples] == [s.sample_id for s in g.samples]
    assert [s.advantage for s in stored.samples] == pytest.approx([0.5, 0.5, -0.5, -0.5])
