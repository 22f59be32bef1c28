"""The reward of a rethought response is the verifier's grade of its final committed answer, end to end.

The rollout's real Forced Rethinking path (``GroupBuilder``: first pass, score, plan, continue,
score the rethought response by its own id) runs against a real verifier process on 127.0.0.1
through ``HttpScorer``; only the engine is scripted (a character-level stand-in that returns fixed
first answers and continuations), so the texts the verifier sees are known exactly.  A second test
sends every retraction case of the labelled suite through the same scorer: the rollout's reward
follows the suite's label, the one grading the verifier defines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from common.config import load_config
from common.schemas import PromptTask
from common.schemas.verifier import VerifyItem
from services.rollout.actor import GroupBuilder
from services.rollout.engines.base import Completion, GenerationRequest, GenerationResult, PromptInputs
from services.rollout.scoring import HttpScorer, LocalScorer
from services.verifier import count_waits, reward
from services.verifier.casefile import load_cases

pytestmark = pytest.mark.timeout(180)

EOS = 1
CASES = Path(__file__).resolve().parents[1] / "verifier" / "cases.yaml"


class CharTokenizer:
    """One token per character (ids offset by 10); EOS is id 1."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + 10 for c in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(t) - 10) for t in token_ids if int(t) != EOS)


class ScriptedEngine:
    """Every first pass is ``y1``, every continuation ``y2`` (both end with EOS)."""

    def __init__(self, y1: str, y2: str) -> None:
        self.y1, self.y2 = y1, y2
        self.tokenizer = CharTokenizer()
        self.loaded_version = 0

    def encode_prompt(self, task: PromptTask) -> PromptInputs:
        return PromptInputs(token_ids=np.asarray([2, 3], dtype=np.int32), text=task.question)

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode(list(token_ids))

    def strip_eos(self, token_ids: np.ndarray) -> np.ndarray:
        return token_ids[:-1] if len(token_ids) and token_ids[-1] == EOS else token_ids

    def _completion(self, text: str) -> Completion:
        ids = np.asarray([*self.tokenizer.encode(text), EOS], dtype=np.int32)
        return Completion(ids, np.full(len(ids), -0.5, dtype=np.float32), "stop", text, 0)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [
            GenerationResult(r.request_id, [self._completion(self.y1) for _ in range(r.params.n)], r.prompt.token_ids, 0)
            for r in requests
        ]

    async def continue_from(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            assert r.prefix_token_ids is not None
            prefix_lp = np.full(len(r.prefix_token_ids), -0.5, dtype=np.float32)
            out.append(GenerationResult(r.request_id, [self._completion(self.y2)], r.prompt.token_ids, 0, prefix_lp))
        return out


def _cfg():
    return load_config(
        None,
        [
            "algorithm.sampling.n=2",
            "algorithm.rethink.start_version=0",
            "algorithm.rethink.skip_prob=0.0",
            "algorithm.rethink.truncate_prob=0.0",
            "algorithm.rethink.skip_incorrect_above_acc=1.0",
            "algorithm.rethink.min_continuation_tokens=2",
            "algorithm.rethink.max_continuation_tokens=400",
            "algorithm.rethink.max_candidate_tokens=400",
        ],
    )


def _build(verifier_url: str, y1: str, y2: str, gold: str):
    cfg = _cfg()
    task = PromptTask(task_id="t-rr", prompt_id="p-rr", question="<image>What is the sum?", answer=gold, images=[])

    async def run():
        scorer = HttpScorer(cfg, base_url=verifier_url)
        gb = GroupBuilder(cfg, ScriptedEngine(y1, y2), scorer, server_id="test")
        try:
            [out] = await gb.build([task])
            return out, gb.stats
        finally:
            await scorer.close()

    return asyncio.run(run())


Y1 = "The parts are 2 and 3, so the sum is \\boxed{5}."


def test_a_rethought_response_that_retracts_its_box_gets_the_reward_of_its_final_answer(verifier_url: str) -> None:
    out, stats = _build(verifier_url, Y1, " 5 is wrong: the second part is 4, not 3. So the sum is 6.", gold="6")
    g = out.group
    assert [s.rethought for s in g.samples] == [True, True]  # both continuations kept: correct final answer
    for s in g.samples:
        assert "\\boxed{5}" in s.response_text and s.response_text.endswith("So the sum is 6.")
        assert s.correct and s.reward == 1.0 and s.extracted == "6"
    assert g.first_pass_accuracy == 0.0 and stats.rethink.as_dict()["accuracy_after"] == 1.0


def test_a_retracted_box_is_not_credited_to_the_rethought_response(verifier_url: str) -> None:
    # y1 is right (5); the continuation retracts it and states 6: the rethought response is wrong
    out, stats = _build(verifier_url, Y1, " 5 is wrong: the second part is 4, not 3. So the sum is 6.", gold="5")
    assert [s.rethought for s in out.group.samples] == [False, False]
    assert all(s.correct and s.reward == 1.0 for s in out.group.samples)  # first passes kept
    assert stats.rethink.dropped == {"wrong_answer": 2} and stats.rethink.as_dict()["accuracy_after"] == 0.0


def test_a_retraction_without_a_new_answer_gives_no_answer(verifier_url: str) -> None:
    out, stats = _build(verifier_url, Y1, " That is wrong; I added the wrong parts.", gold="5")
    assert not any(s.rethought for s in out.group.samples)
    assert stats.rethink.dropped == {"wrong_answer": 2} and stats.rethink.y2_correct == 0


def test_a_confirming_continuation_keeps_the_box(verifier_url: str) -> None:
    out, _ = _build(verifier_url, Y1, " 2 + 3 = 5. Yes, it is correct.", gold="5")
    assert [s.rethought for s in out.group.samples] == [True, True]
    assert all(s.correct and s.reward == 1.0 and s.extracted == "5" for s in out.group.samples)


def test_rollout_scorers_reward_every_retraction_case_by_its_label(verifier_url: str) -> None:
    cases = [c for c in load_cases(CASES) if "retraction" in c.tags and not c.known_miss]
    assert len(cases) >= 40
    items = [
        VerifyItem(id=c.id, response=c.response, gold=c.gold, question=c.question, eos=True, rethought=True)
        for c in cases
    ]
    cfg = _cfg()

    async def run():
        http, local = HttpScorer(cfg, base_url=verifier_url), LocalScorer(cfg)
        try:
            return await http.score(items), await local.score(items)
        finally:
            await http.close()

    over_http, in_process = asyncio.run(run())
    for c in cases:
        r = over_http[c.id]
        assert r.correct is c.expected, (c.id, r.reason, r.extracted)
        # the label's reward (1.0 / 0.0; -0.1 for the hostile case with thousands of "Wait"s: invalid)
        assert r.reward == reward(c.expected, eos=True, n_wait=count_waits(c.response), rethought=True, cfg=cfg.algorithm.reward)
        assert r.model_dump(include={"correct", "extracted", "reward"}) == in_process[c.id].model_dump(include={"correct", "extracted", "reward"})
