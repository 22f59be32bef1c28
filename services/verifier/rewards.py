"""The rule-based reward of spec section 5, from a verdict plus facts about the response.

- Invalid response (``invalid_rule``): no EOS, or more than ``invalid_max_waits`` "wait" markers
  -> ``invalid`` (-0.1), whatever the verdict.
- Otherwise ``correct`` (1.0) / ``wrong`` (0.0).
- ``shaping`` (the public code's wait-count shaping, off by default): a first-pass (not rethought)
  correct response with 1..``shaping_bonus_max_waits`` waits gets ``correct + shaping_bonus`` (1.1);
  a correct response with more waits gets ``correct - shaping_penalty_per_wait * n_wait``, never below
  ``shaping_floor`` (-0.1).  Wrong responses stay at ``wrong``.

"wait" markers are counted case-insensitively as whole words ("Wait", "wait,", not "awaited").
"""

from __future__ import annotations

import re

from common.config import RewardConfig

_WAIT = re.compile(r"\bwait\b", re.I)


def count_waits(text: str) -> int:
    """Number of whole-word, case-insensitive "wait" markers in ``text``."""
    return len(_WAIT.findall(text)) if text else 0


def reward(
    verdict: object,
    *,
    eos: bool = True,
    n_wait: int = 0,
    rethought: bool = False,
    cfg: RewardConfig | None = None,
) -> float:
    """Reward of one response.  ``verdict`` is a ``Verdict`` (its ``correct``) or a bool."""
    cfg = cfg or RewardConfig()
    correct = bool(getattr(verdict, "correct", verdict))
    if cfg.invalid_rule and (not eos or n_wait > cfg.invalid_max_waits):
        return cfg.invalid
    if not correct:
        return cfg.wrong
    if not cfg.shaping or n_wait <= 0:
        return cfg.correct
    if n_wait <= cfg.shaping_bonus_max_waits:
        return cfg.correct if rethought else cfg.correct + cfg.shaping_bonus
    return max(cfg.correct - cfg.shaping_penalty_per_wait * n_wait, cfg.shaping_floor)
