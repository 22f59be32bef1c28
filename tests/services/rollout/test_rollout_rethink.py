"""Forced Rethinking logic (services/rollout/rethink.py) with seeded RNGs and the tiny tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from common.config import RETHINK_TRIGGERS, RethinkConfig
from services.rollout import rethink
from services.rollout.rethink import FirstPassView


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from common.model_loading import load_processor

    return load_processor(tiny_model_dir).tokenizer


def view(tok, i, text, *, eos=True, correct=True, n_tokens=None):
    ids = np.asarray(tok.encode(text, add_special_tokens=False), dtype=np.int32)
    if n_tokens is not None:  # pad/cut to an exact length for the length rule
        ids = np.resize(ids, n_tokens).astype(np.int32)
    return FirstPassView(index=i, token_ids=ids, text=tok.decode(ids.tolist(), skip_special_tokens=True), eos=eos, correct=correct)


# --------------------------------------------------------------------------- candidates


def test_candidates_need_eos_and_length(tok):
    cfg = RethinkConfig(skip_prob=0.0, max_candidate_tokens=20)
    views = [
        view(tok, 0, "x", eos=True, n_tokens=20),
        view(tok, 1, "x", eos=True, n_tokens=21),  # too long
        view(tok, 2, "x", eos=False, n_tokens=5),  # no EOS
        view(tok, 3, "x", eos=True, n_tokens=1),
    ]
    assert rethink.select_candidates(views, cfg, random.Random(0)) == [0, 3]


def test_high_accuracy_groups_skip_wrong_responses(tok):
    cfg = RethinkConfig(skip_prob=0.0)
    # 8 of 10 correct = 0.8 > 0.7: the two wrong ones are skipped
    views = [view(tok, i, "a", correct=i >= 2) for i in range(10)]
    assert rethink.select_candidates(views, cfg, random.Random(0)) == list(range(2, 10))
    # 7 of 10 = 0.7 is not above 0.7: wrong ones stay candidates
    views = [view(tok, i, "a", correct=i >= 3) for i in range(10)]
    assert rethink.select_candidates(views, cfg, random.Random(0)) == list(range(10))


def test_skip_probability_is_respected():
    cfg = RethinkConfig(skip_prob=0.35)
    rng = random.Random(123)
    views = [FirstPassView(i, np.zeros(3, np.int32), "t", True, True) for i in range(4000)]
    kept = len(rethink.select_candidates(views, cfg, rng))
    assert abs(kept / 4000 - 0.65) < 0.03
    assert rethink.select_candidates(views[:50], RethinkConfig(skip_prob=1.0), rng) == []


# --------------------------------------------------------------------------- truncation


@pytest.mark.parametrize(
    "text,rule,cut_before",
    [
        ("So x=2. Wait, no. Wait, x=3. \\boxed{3}", "wait", "Wait, x=3."),
        ("x is 3 so \\boxed{2} hmm \\boxed{3}", "boxed", "\\boxed{3}"),
        ("The answer is 3, the answer stays.", "answer", "answer is 3"),
        ("First.\n\nSecond.\n\nThird", "blank_line", "\n\nThird"),
    ],
)
def test_truncation_rules_in_order(text, rule, cut_before):
    pos, name = rethink.truncation_point(text)
    assert name == rule
    assert text[pos:].startswith(cut_before)


def test_truncation_needs_something_before_the_marker():
    assert rethink.truncation_point("Wait \\boxed{1}") == (5, "boxed")  # "Wait" at 0 does not apply
    assert rethink.truncation_point("plain text") is None


def test_cut_keeps_exact_token_prefix(tok):
    text = "We count 3 circles.\n\nSo the answer is \\boxed{3}. Wait, let me check."
    ids = tok.encode(text, add_special_tokens=False)
    decoded = tok.decode(ids, skip_special_tokens=True)
    for marker in ("Wait", "\\boxed", "answer", "\n\n"):
        cut = decoded.rfind(marker)
        k = rethink.cut_token_prefix(ids, decoded, cut, lambda t: tok.decode(list(t), skip_special_tokens=True))
        prefix_text = tok.decode(ids[:k], skip_special_tokens=True)
        assert 0 < k < len(ids)
        assert decoded[:cut].startswith(prefix_text)  # never past the cut
        assert prefix_text == prefix_text.rstrip()  # no trailing whitespace before the trigger
        assert prefix_text.strip() and len(decoded[:cut].rstrip()) - len(prefix_text) < 8


def test_plan_truncates_and_appends_trigger(tok):
    text = "There are 4 dots. \\boxed{4}"
    v = view(tok, 3, text, correct=False)
    always_cut = RethinkConfig(truncate_prob=1.0, generic_trigger_prob=0.0)
    p = rethink.plan_rethink(v, always_cut, random.Random(0), tok)
    assert p.truncated and p.cut_rule == "boxed" and p.index == 3
    assert p.trigger == "\n\nWait, there might be a mistake"  # wrong y1, specific trigger
    trig = tok.encode(p.trigger, add_special_tokens=False)
    assert p.prefix_token_ids.tolist() == v.token_ids[: p.kept_tokens].tolist() + trig
    assert tok.decode(v.token_ids[: p.kept_tokens].tolist()) == "There are 4 dots."
    never_cut = RethinkConfig(truncate_prob=0.0, generic_trigger_prob=0.0)
    p2 = rethink.plan_rethink(view(tok, 0, text, correct=True), never_cut, random.Random(0), tok)
    assert not p2.truncated and p2.kept_tokens == len(v.token_ids)
    assert p2.trigger == "\n\nWait, let's double check"


def test_trigger_distribution():
    cfg = RethinkConfig()
    rng = random.Random(7)
    counts = {t: 0 for t in RETHINK_TRIGGERS}
    n = 20000
    for i in range(n):
        counts[rethink.choose_trigger(i % 2 == 0, cfg, rng)] += 1
    wait, seem, double, mistake = (counts[t] / n for t in RETHINK_TRIGGERS)
    assert abs(wait - 0.5 * 0.4) < 0.015 and abs(seem - 0.5 * 0.6) < 0.015
    assert abs(double - 0.25) < 0.015 and abs(mistake - 0.25) < 0.015


def test_same_seed_same_plans(tok):
    views = [view(tok, i, f"Step {i}. Wait, so \\boxed{{{i}}}", correct=i % 2 == 0) for i in range(8)]
    cfg = RethinkConfig()
    a = rethink.plan_group(views, cfg, random.Random("s:task-1"), tok)
    b = rethink.plan_group(views, cfg, random.Random("s:task-1"), tok)
    assert [(p.index, p.trigger, p.kept_tokens) for p in a] == [(p.index, p.trigger, p.kept_tokens) for p in b]
    assert 0 < len(a) < 8


def test_eval_plan_always_wait(tok):
    v = view(tok, 0, "It is \\boxed{2}")
    p = rethink.eval_plan(v, RethinkConfig(), tok)
    assert p.trigger == "\n\nWait" and not p.truncated and p.kept_tokens == len(v.token_ids)


# --------------------------------------------------------------------------- acceptance


def test_judge_bounds_are_exclusive():
    cfg = RethinkConfig()  # 30 < len < 1024, <= 4 waits
    j = lambda n, eos=True, ok=True, w=1: rethink.judge_continuation(0, n, eos, ok, w, cfg).reason  # noqa: E731
    assert j(30) == "too_short" and j(31) == "kept"
    assert j(1023) == "kept" and j(1024) == "too_long"
    assert j(100, eos=False) == "no_eos"
    assert j(100, w=4) == "kept" and j(100, w=5) == "too_many_waits"
    assert j(100, ok=False) == "wrong_answer"


def test_at_most_k_kept_per_prompt():
    cfg = RethinkConfig(max_kept_per_prompt=2)
    ds = [rethink.judge_continuation(i, 50, True, i != 1, 1, cfg) for i in range(5)]
    out = rethink.limit_kept(ds, cfg)
    assert [d.reason for d in out] == ["kept", "wrong_answer", "kept", "over_limit", "over_limit"]
    assert sum(d.kept for d in out) == 2
