"""Forced Rethinking (spec section 4) as pure, seeded logic: no engine, no network, no Redis.

The actor calls, per group:

1. ``select_candidates(views, cfg, rng)`` -- which first-pass responses get a rethinking attempt
   (EOS and at most ``max_candidate_tokens``; wrong ones skipped when the group's accuracy is above
   ``skip_incorrect_above_acc``; each survivor then skipped with probability ``skip_prob``).
2. ``plan_rethink(view, cfg, rng, tokenizer)`` -- the prefix ``y1' + trigger`` as token ids: with
   probability ``truncate_prob`` y1 is cut back (before its last "Wait", else before its last
   "\\boxed", else before its first "answer", else before its last blank line), then a trigger is
   chosen (generic "\\n\\nWait" / "\\n\\nWait, does it seem right?" with probability
   ``generic_trigger_prob``, else "\\n\\nWait, let's double check" for a correct y1 and
   "\\n\\nWait, there might be a mistake" for a wrong one).
3. ``judge_continuation(...)`` -- keep y2 only if ``min < len(y2) < max`` tokens, it ended with EOS,
   the full response has at most ``max_wait_markers`` "wait"s and its answer is correct.
4. ``limit_kept(decisions, cfg)`` -- at most ``max_kept_per_prompt`` kept per prompt (candidate order).

Random draws happen in a fixed order so that a seeded ``random.Random`` reproduces every decision:
one ``skip`` draw per eligible response (in group order), then per selected candidate one
``truncate`` draw, one ``generic`` draw and, for a generic trigger, one ``wait vs seem-right`` draw.

Truncation works on token ids, never on re-tokenized text: the cut keeps the longest token prefix of
y1 whose decoded text ends at or before the character cut (trailing whitespace-only tokens are
dropped too), so y1' keeps the exact sampled tokens and their sampler log-probs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from common.config import RETHINK_TRIGGERS, RethinkConfig

TRIGGER_WAIT, TRIGGER_SEEM_RIGHT, TRIGGER_DOUBLE_CHECK, TRIGGER_MISTAKE = RETHINK_TRIGGERS

# Truncation rules in the order they are tried: (name, marker, use the last occurrence?)
CUT_RULES: tuple[tuple[str, str, bool], ...] = (
    ("wait", "Wait", True),
    ("boxed", "\\boxed", True),
    ("answer", "answer", False),
    ("blank_line", "\n\n", True),
)

# Reasons a continuation is not kept (``judge_continuation``), plus "over_limit" from ``limit_kept``.
KEPT = "kept"
DROP_REASONS = ("too_short", "too_long", "no_eos", "too_many_waits", "wrong_answer", "over_limit")


class Detokenizer(Protocol):
    """What the rethinking logic needs from a tokenizer."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class FirstPassView:
    """What selection needs to know about one first-pass response."""

    index: int  # position in the group
    token_ids: np.ndarray  # int32 response tokens, EOS token excluded
    text: str  # decoded ``token_ids`` (special tokens skipped)
    eos: bool  # the response ended with EOS (finish_reason == "stop")
    correct: bool


@dataclass(frozen=True, slots=True)
class RethinkPlan:
    """One rethinking attempt: continue generation from ``prompt + prefix_token_ids``."""

    index: int  # position of the original response in the group
    kept_tokens: int  # len(y1'): y1 tokens kept before the trigger
    truncated: bool
    cut_rule: str | None  # which CUT_RULES entry cut y1 (None: not truncated)
    trigger: str
    trigger_token_ids: np.ndarray  # int32
    prefix_token_ids: np.ndarray  # int32, y1' + trigger
    y1_correct: bool


@dataclass(slots=True)
class Decision:
    """The verdict on one continuation."""

    index: int
    kept: bool
    reason: str  # KEPT or one of DROP_REASONS
    y2_tokens: int = 0
    correct: bool = False
    n_wait: int = 0
    extra: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- 1. candidates


def group_accuracy(views: Sequence[FirstPassView]) -> float:
    return sum(v.correct for v in views) / len(views) if views else 0.0


def select_candidates(views: Sequence[FirstPassView], cfg: RethinkConfig, rng: random.Random) -> list[int]:
    """Indices (group order) of the responses that get a rethinking attempt."""
    acc = group_accuracy(views)
    chosen: list[int] = []
    for v in views:
        if not v.eos or len(v.token_ids) > cfg.max_candidate_tokens:
            continue
        if acc > cfg.skip_incorrect_above_acc and not v.correct:
            continue
        if rng.random() < cfg.skip_prob:
            continue
        chosen.append(v.index)
    return chosen


# --------------------------------------------------------------------------- 2. prefix


def truncation_point(text: str) -> tuple[int, str] | None:
    """``(char index, rule)`` of the first applicable cut rule, or None when none applies.

    A rule applies when its marker occurs at a position > 0 (something must remain before it).
    """
    for name, marker, last in CUT_RULES:
        pos = text.rfind(marker) if last else text.find(marker)
        if pos > 0:
            return pos, name
    return None


def cut_token_prefix(token_ids: Sequence[int], text: str, char_cut: int, decode: Callable[[Sequence[int]], str]) -> int:
    """Largest ``k`` such that ``decode(token_ids[:k])`` is a prefix of ``text[:char_cut]``.

    Trailing tokens that decode to whitespace only are dropped as well, so the trigger (which
    starts with a blank line) follows the text directly.  Uses a binary search on the decoded
    length (monotone in ``k``) and then walks back while the prefix property fails (a token can
    straddle the cut or decode to a partial UTF-8 sequence).
    """
    n = len(token_ids)
    target = text[:char_cut]
    lo, hi = 0, n
    while lo < hi:  # largest k with len(decode(ids[:k])) <= char_cut
        mid = (lo + hi + 1) // 2
        if len(decode(token_ids[:mid])) <= char_cut:
            lo = mid
        else:
            hi = mid - 1
    k = lo
    while k > 0 and not target.startswith(decode(token_ids[:k])):
        k -= 1
    while k > 0 and decode(token_ids[k - 1 : k]).strip() == "":
        k -= 1
    return k


def choose_trigger(y1_correct: bool, cfg: RethinkConfig, rng: random.Random) -> str:
    if rng.random() < cfg.generic_trigger_prob:
        return TRIGGER_WAIT if rng.random() < cfg.wait_vs_seem_right else TRIGGER_SEEM_RIGHT
    return TRIGGER_DOUBLE_CHECK if y1_correct else TRIGGER_MISTAKE


def encode_trigger(tokenizer: Detokenizer, trigger: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(trigger, add_special_tokens=False), dtype=np.int32)


def plan_rethink(view: FirstPassView, cfg: RethinkConfig, rng: random.Random, tokenizer: Detokenizer) -> RethinkPlan:
    """Prefix ``y1' + trigger`` for one selected candidate (draws: truncate, then trigger)."""
    ids = np.asarray(view.token_ids, dtype=np.int32)
    kept = len(ids)
    truncated, rule = False, None
    if rng.random() < cfg.truncate_prob:
        point = truncation_point(view.text)
        if point is not None:

            def decode(t: Sequence[int]) -> str:
                return tokenizer.decode(list(t), skip_special_tokens=True)

            k = cut_token_prefix(ids.tolist(), view.text, point[0], decode)
            if 0 < k < len(ids):
                kept, truncated, rule = k, True, point[1]
    trigger = choose_trigger(view.correct, cfg, rng)
    trig_ids = encode_trigger(tokenizer, trigger)
    return RethinkPlan(
        index=view.index,
        kept_tokens=kept,
        truncated=truncated,
        cut_rule=rule,
        trigger=trigger,
        trigger_token_ids=trig_ids,
        prefix_token_ids=np.concatenate([ids[:kept], trig_ids]).astype(np.int32),
        y1_correct=view.correct,
    )


def plan_group(
    views: Sequence[FirstPassView], cfg: RethinkConfig, rng: random.Random, tokenizer: Detokenizer
) -> list[RethinkPlan]:
    """Selection then one plan per selected candidate, all from the same ``rng``."""
    by_index = {v.index: v for v in views}
    return [plan_rethink(by_index[i], cfg, rng, tokenizer) for i in select_candidates(views, cfg, rng)]


def eval_plan(view: FirstPassView, cfg: RethinkConfig, tokenizer: Detokenizer) -> RethinkPlan:
    """Test-time rethinking: no truncation, always ``cfg.eval_trigger``."""
    ids = np.asarray(view.token_ids, dtype=np.int32)
    trig_ids = encode_trigger(tokenizer, cfg.eval_trigger)
    return RethinkPlan(
        index=view.index,
        kept_tokens=len(ids),
        truncated=False,
        cut_rule=None,
        trigger=cfg.eval_trigger,
        trigger_token_ids=trig_ids,
        prefix_token_ids=np.concatenate([ids, trig_ids]).astype(np.int32),
        y1_correct=view.correct,
    )


# --------------------------------------------------------------------------- 3./4. acceptance


def judge_continuation(
    index: int, y2_tokens: int, eos: bool, correct: bool, n_wait: int, cfg: RethinkConfig
) -> Decision:
    """Keep y2 iff min < len(y2) < max (exclusive), EOS, n_wait <= max_wait_markers, correct."""
    reason = KEPT
    if y2_tokens <= cfg.min_continuation_tokens:
        reason = "too_short"
    elif y2_tokens >= cfg.max_continuation_tokens:
        reason = "too_long"
    elif not eos:
        reason = "no_eos"
    elif n_wait > cfg.max_wait_markers:
        reason = "too_many_waits"
    elif not correct:
        reason = "wrong_answer"
    return Decision(index=index, kept=reason == KEPT, reason=reason, y2_tokens=y2_tokens, correct=correct, n_wait=n_wait)


def limit_kept(decisions: Sequence[Decision], cfg: RethinkConfig) -> list[Decision]:
    """Mark kept decisions beyond ``max_kept_per_prompt`` (in the given order) as ``over_limit``."""
    out = []
    n_kept = 0
    for d in decisions:
        if d.kept:
            if n_kept >= cfg.max_kept_per_prompt:
                d = Decision(d.index, False, "over_limit", d.y2_tokens, d.correct, d.n_wait, dict(d.extra))
            else:
                n_kept += 1
        out.append(d)
    return out
