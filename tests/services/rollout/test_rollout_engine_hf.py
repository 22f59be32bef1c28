"""The transformers engine: batched sampling with log-probs, continuation, weight loading, locking."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from common.config import PROMPT_SUFFIX
from common.model_loading import load_model, teacher_forced_logprobs_batch
from services.rollout.engines import EngineError, GenerationRequest, SamplingParams, make_engine

from rollout_helpers import png

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def engine(cfg_factory):
    cfg = cfg_factory("algorithm.sampling.max_new_tokens=16")
    e = make_engine(cfg)
    asyncio.run(e.start())
    yield e
    asyncio.run(e.close())


def _prompts(e):
    return [
        e.encode_question("<image>How many shapes are there?", [png((255, 0, 0))], PROMPT_SUFFIX),
        e.encode_question("Which color? <image>", [png((0, 200, 0), (112, 56))], PROMPT_SUFFIX),
    ]


def test_batched_generation_logprobs_match_the_learner(engine):
    p1, p2 = _prompts(engine)
    reqs = [
        GenerationRequest("a", p1, SamplingParams(n=3, max_new_tokens=12, seed=1)),
        GenerationRequest("b", p2, SamplingParams(n=2, max_new_tokens=12, seed=1)),
    ]
    res = asyncio.run(engine.generate(reqs))
    assert [r.request_id for r in res] == ["a", "b"] and [len(r.completions) for r in res] == [3, 2]
    assert res[0].prompt_token_ids.dtype == np.int32 and len(res[0].prompt_token_ids) == p1.tensors["input_ids"].shape[1]
    items = []
    for r, p in zip(res, (p1, p2)):
        for c in r.completions:
            assert c.token_ids.dtype == np.int32 and c.logprobs.dtype == np.float32
            assert len(c.token_ids) == len(c.logprobs) <= 12
            ends_eos = int(c.token_ids[-1]) in engine.eos_token_ids
            assert c.finish_reason == ("stop" if ends_eos else "length")
            assert ends_eos or len(c.token_ids) == 12
            assert not any(int(t) in engine.eos_token_ids for t in c.token_ids[:-1])
            assert np.isfinite(c.logprobs).all() and (c.logprobs < 0).all()
            assert c.policy_version == 0 and c.text == engine.decode(c.token_ids)
            items.append((p.tensors, c.token_ids.astype(np.int64)))
    # the learner's teacher-forced log-probs (common.model_loading) equal the sampler's
    with torch.no_grad():
        tf = teacher_forced_logprobs_batch(engine.model, items)
    flat = [c for r in res for c in r.completions]
    for c, lp in zip(flat, tf):
        assert np.abs(lp.numpy() - c.logprobs).max() < 1e-4
    # same seed, same samples
    again = asyncio.run(engine.generate(reqs))
    assert [c.token_ids.tolist() for c in again[0].completions] == [c.token_ids.tolist() for c in res[0].completions]
    assert engine.shared_prefill  # the rows of each prompt shared one prefill (no fallback happened)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_gives_the_plain_batch_results(engine, temperature):
    """One prefill per prompt with its KV cache repeated per row produces the same tokens and
    log-probs as prefilling every row (prompts of different lengths: left padding, image sizes)."""
    p1, p2 = _prompts(engine)
    reqs = [
        GenerationRequest("a", p1, SamplingParams(n=3, max_new_tokens=12, temperature=temperature, seed=7)),
        GenerationRequest("b", p2, SamplingParams(n=4, max_new_tokens=12, temperature=temperature, seed=7)),
        GenerationRequest("c", p1, SamplingParams(n=1, max_new_tokens=12, temperature=temperature, seed=7)),
    ]
    shared = asyncio.run(engine.generate(reqs))
    assert engine.shared_prefill
    engine.shared_prefill = False
    plain = asyncio.run(engine.generate(reqs))
    for s, p in zip(shared, plain):
        assert [c.token_ids.tolist() for c in s.completions] == [c.token_ids.tolist() for c in p.completions]
        for cs, cp in zip(s.completions, p.completions):
            assert np.abs(cs.logprobs - cp.logprobs).max() < 1e-5


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prompt_continuations_give_the_plain_batch_results(engine, temperature):
    """Continuations of several prompts with prefixes of different lengths: one prefill per distinct
    prompt, the prefixes appended after a masked gap, produce the same tokens, log-probs and prefix
    log-probs as prefilling every row in full plus a teacher-forced forward."""
    p1, p2 = _prompts(engine)
    [f1, f2] = asyncio.run(engine.generate([
        GenerationRequest("a", p1, SamplingParams(n=3, max_new_tokens=10, seed=3)),
        GenerationRequest("b", p2, SamplingParams(n=2, max_new_tokens=10, seed=3)),
    ]))
    trig = np.asarray(engine.tokenizer.encode("\n\nWait, let's double check", add_special_tokens=False), dtype=np.int32)
    plans = [(p1, f1.completions[0], 6), (p1, f1.completions[1], 2), (p2, f2.completions[0], 9),
             (p1, f1.completions[2], 0), (p2, f2.completions[1], 4)]
    reqs = [
        GenerationRequest(f"r{k}", p, SamplingParams(n=1, temperature=temperature, max_new_tokens=8, seed=11),
                          prefix_token_ids=np.concatenate([y1.token_ids[:cut], trig]))
        for k, (p, y1, cut) in enumerate(plans)
    ]
    shared = asyncio.run(engine.continue_from(reqs))
    assert engine.shared_prefill  # no fallback happened
    engine.shared_prefill = False
    plain = asyncio.run(engine.continue_from(reqs))
    for req, s, p in zip(reqs, shared, plain):
        assert s.completions[0].token_ids.tolist() == p.completions[0].token_ids.tolist()
        assert np.abs(s.completions[0].logprobs - p.completions[0].logprobs).max() < 1e-4
        assert len(s.prefix_logprobs) == len(req.prefix_token_ids)
        assert np.abs(s.prefix_logprobs - p.prefix_logprobs).max() < 1e-4
    # a prefix that copies y1 has y1's sampler log-probs
    np.testing.assert_allclose(shared[0].prefix_logprobs[:6], f1.completions[0].logprobs[:6], atol=1e-4)
    np.testing.assert_allclose(shared[2].prefix_logprobs[:9], f2.completions[0].logprobs[:9], atol=1e-4)


def test_continuation_from_prefix(engine):
    p1, _ = _prompts(engine)
    [first] = asyncio.run(engine.generate([GenerationRequest("a", p1, SamplingParams(n=1, max_new_tokens=10, seed=3))]))
    y1 = first.completions[0]
    trig = np.asarray(engine.tokenizer.encode("\n\nWait", add_special_tokens=False), dtype=np.int32)
    prefix = np.concatenate([y1.token_ids[:6], trig])
    [cont] = asyncio.run(
        engine.continue_from([GenerationRequest("a:r", p1, SamplingParams(n=1, temperature=0.9, max_new_tokens=7, seed=4), prefix_token_ids=prefix)])
    )
    assert len(cont.prefix_logprobs) == len(prefix)
    np.testing.assert_allclose(cont.prefix_logprobs[:6], y1.logprobs[:6], atol=1e-4)  # same weights, same tokens
    assert np.isfinite(cont.prefix_logprobs).all()
    y2 = cont.completions[0]
    assert len(y2.token_ids) <= 7 and np.array_equal(cont.prompt_token_ids, first.prompt_token_ids)
    # the continuation's log-probs are those of prompt + prefix + y2 under the model
    with torch.no_grad():
        [tf] = teacher_forced_logprobs_batch(engine.model, [(p1.tensors, np.concatenate([prefix, y2.token_ids]).astype(np.int64))])
    np.testing.assert_allclose(tf.numpy()[len(prefix) :], y2.logprobs, atol=1e-4)
    with pytest.raises(EngineError):
        asyncio.run(engine.continue_from([GenerationRequest("x", p1, SamplingParams())]))


def test_weight_load_changes_outputs_and_version(engine, sft_model_dir):
    p1, _ = _prompts(engine)
    req = [GenerationRequest("a", p1, SamplingParams(n=2, max_new_tokens=20, seed=5))]
    before = asyncio.run(engine.generate(req))[0]
    assert before.policy_version == 0 and "boxed" not in before.completions[0].text
    sft = load_model(sft_model_dir)
    asyncio.run(engine.load_weights(dict(sft.state_dict()), version=7))  # named tensors, live names
    after = asyncio.run(engine.generate(req))[0]
    assert engine.loaded_version == 7 and after.policy_version == 7
    assert all(c.policy_version == 7 for c in after.completions)
    assert after.completions[0].text.endswith("\\boxed{3}.") and after.completions[0].finish_reason == "stop"
    assert int(after.completions[0].token_ids[-1]) in engine.eos_token_ids
    # back to the base weights from a checkpoint folder (on-disk legacy key names)
    asyncio.run(engine.load_weights(str(engine.model_path), version=8))
    again = asyncio.run(engine.generate(req))[0]
    assert again.policy_version == 8
    assert [c.token_ids.tolist() for c in again.completions] == [c.token_ids.tolist() for c in before.completions]


def test_bad_weights_are_rejected_and_keep_the_version(engine, tmp_path):
    with pytest.raises(EngineError, match="unknown weight name"):
        asyncio.run(engine.load_weights({"no.such.weight": torch.zeros(2)}, version=3))
    name, t = next(iter(engine.model.state_dict().items()))
    with pytest.raises(EngineError, match="shape"):
        asyncio.run(engine.load_weights({name: torch.zeros(*t.shape, 2)}, version=3))
    with pytest.raises(EngineError, match="does not exist"):
        asyncio.run(engine.load_weights(str(tmp_path / "missing"), version=3))
    assert engine.loaded_version == 0


def test_weight_swap_waits_for_generation_in_flight(engine, sft_model_dir):
    """A swap requested during a generation call starts after it: that call's outputs are v0."""
    p1, _ = _prompts(engine)
    sft = dict(load_model(sft_model_dir).state_dict())

    async def scenario():
        long = asyncio.create_task(engine.generate([GenerationRequest("a", p1, SamplingParams(n=8, max_new_tokens=200, seed=1))]))
        await asyncio.sleep(0.05)
        assert engine.in_flight_calls == 1
        swap = asyncio.create_task(engine.load_weights(sft, version=1))
        await asyncio.sleep(0.05)
        assert not swap.done() and engine.loaded_version == 0
        # a new call queued behind the pending swap runs with the new weights
        late = asyncio.create_task(engine.generate([GenerationRequest("b", p1, SamplingParams(n=1, max_new_tokens=20, seed=1))]))
        [r_long] = await long
        await swap
        [r_late] = await late
        return r_long, r_late

    r_long, r_late = asyncio.run(scenario())
    assert r_long.policy_version == 0 and all(c.policy_version == 0 for c in r_long.completions)
    assert r_late.policy_version == 1 and r_late.completions[0].text.endswith("\\boxed{3}.")


def test_bad_prompt_inputs(engine):
    from common.data.images import ImageError

    with pytest.raises(ImageError):
        engine.encode_question("<image>?", [b"not an image"])
    with pytest.raises(ValueError):
        engine.encode_question("<image><image>?", [png((1, 2, 3))])  # more placeholders than images
    with pytest.raises(ValueError):
        SamplingParams(n=0)
