"""Statistical tests: ``ssr`` draws follow P(j) = |A_j|^alpha / sum |A|^alpha (fresh pool) and
(|A|^alpha + eps) in the replay pool.  Chi-square goodness of fit, fixed seeds, real Redis."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from buffer_testlib import make_group
from services.buffer.client import BufferClient

N_DRAWS = 30_000


def _store_varied_groups(c: BufferClient, n_groups: int = 24) -> dict[str, float]:
    rng = np.random.default_rng(0)
    advantages: dict[str, float] = {}
    for i in range(n_groups):
        size = int(rng.integers(3, 9))
        rewards = rng.choice([0.0, 0.2, 0.5, 1.0, 1.1, -0.1], size=size).tolist()
        res = c.add_group(make_group(i, rewards))
        for s, a in zip(make_group(i, rewards).samples, res.advantages):
            if a != 0:
                advantages[s.sample_id] = a
    return advantages


def _fit(counts: Counter, weights: dict[str, float]) -> tuple[float, float]:
    ids = sorted(weights)
    obs = np.array([counts.get(i, 0) for i in ids], dtype=float)
    w = np.array([weights[i] for i in ids])
    exp = w / w.sum() * obs.sum()
    return chisquare(obs, exp)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_fresh_draws_follow_priority(cfg, alpha):
    cfg.algorithm.ssr.alpha = alpha
    cfg.algorithm.ssr.reuse_cap = 10**9  # with replacement, no cap in the way
    with BufferClient(cfg) as c:
        adv = _store_varied_groups(c)
        assert len(adv) > 60 and len({round(abs(a), 9) for a in adv.values()}) > 10  # many distinct priorities
        b = c.sample(N_DRAWS, policy_version=0, seed=1234)
        assert len(b) == N_DRAWS and b.n_replay == 0
        counts = Counter(s.sample_id for s in b.samples)
        assert set(counts) <= set(adv)
        stat, p = _fit(counts, {k: abs(a) ** alpha for k, a in adv.items()})
        assert p > 1e-3, (stat, p)
        # the test has power: the same counts clearly reject uniform sampling
        assert _fit(counts, {k: 1.0 for k in adv})[1] < 1e-12


def test_replay_draws_follow_priority_plus_eps(cfg):
    cfg.algorithm.ssr.alpha = 1.0
    cfg.algorithm.ssr.replay_eps = 0.3  # large, so that +eps is measurable
    cfg.algorithm.ssr.reuse_cap = 10**9
    with BufferClient(cfg) as c:
        adv = _store_varied_groups(c, n_groups=12)
        moved = c.sample(len(adv), mode="filter", policy_version=0, seed=1)  # every fresh one trained once
        assert len({s.sample_id for s in moved.samples}) == len(adv) and c.sizes().fresh == 0
        b = c.sample(N_DRAWS, policy_version=0, seed=99)
        assert b.n_replay == N_DRAWS and all(b.replayed)
        counts = Counter(s.sample_id for s in b.samples)
        stat, p = _fit(counts, {k: abs(a) + 0.3 for k, a in adv.items()})
        assert p > 1e-3, (stat, p)
        assert _fit(counts, {k: abs(a) for k, a in adv.items()})[1] < 1e-6  # eps is really added
