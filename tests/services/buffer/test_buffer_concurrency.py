"""Several writer processes and a concurrent sampler on one store: nothing lost, nothing counted
twice, every draw accounted for, store invariants intact."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from collections import Counter

from buffer_testlib import assert_store_consistent, make_group
from common.config import config_from_json
from services.buffer.client import BufferClient

WRITERS, GROUPS_PER_WRITER, GROUP_SIZE = 3, 40, 8


def writer(cfg_json: str, w: int, out: "mp.Queue") -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    cfg = config_from_json(cfg_json)
    rng = random.Random(w)
    stored = retried = 0
    with BufferClient(cfg) as c:
        for i in range(GROUPS_PER_WRITER):
            g = make_group(i, [rng.choice([0.0, 1.0]) for _ in range(GROUP_SIZE)], prefix=f"w{w}-")
            stored += c.add_group(g).stored
            if i % 5 == 0:  # a retried add (e.g. after a lost reply) stores nothing twice
                retried += 1
                assert not c.add_group(g).stored
    out.put((w, stored, retried))


def test_writers_and_sampler_conserve_counts(cfg):
    cfg.algorithm.ssr.reuse_cap = 3
    cfg.algorithm.ssr.replay_capacity = 50
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(cfg.model_dump_json(), w, out)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    draws: Counter = Counter()
    fresh_draw_batches: dict[str, int] = {}
    n_batches = 0
    with BufferClient(cfg) as c:
        def take() -> int:
            nonlocal n_batches
            b = c.sample(32, policy_version=0)
            n_batches += 1
            for s, replayed in b.items():
                draws[s.sample_id] += 1
                assert s.times_sampled == draws[s.sample_id]  # no draw lost or double counted
                if not replayed:
                    assert fresh_draw_batches.setdefault(s.sample_id, n_batches) == n_batches  # fresh once
            return len(b)

        while any(p.is_alive() for p in procs):
            take()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        results = sorted(out.get(timeout=5) for _ in procs)
        assert [r[1] for r in results] == [GROUPS_PER_WRITER] * WRITERS
        while take():
            pass  # drain: everything effective ends up retired by the reuse cap or the replay FIFO

        total_groups = WRITERS * GROUPS_PER_WRITER
        st = c.stats()
        t = st["totals"]
        assert t["groups"] == total_groups and t["samples"] == total_groups * GROUP_SIZE
        assert t["dup_groups"] == sum(r[2] for r in results)
        assert t["draws"] == sum(draws.values()) and t["sample_calls"] == n_batches
        # every stored sample's times_sampled equals the draws we saw of it
        eff = zero = 0
        for w in range(WRITERS):
            for i in range(GROUPS_PER_WRITER):
                g = c.get_group(f"g-w{w}-e0-t{i}")
                assert g is not None and len(g.samples) == GROUP_SIZE
                for s in g.samples:
                    assert s.times_sampled == draws.get(s.sample_id, 0)
                    eff += s.advantage != 0
                    zero += s.advantage == 0
        assert eff == t["eff_samples"] and zero == t["zero_samples"]
        pooled = assert_store_consistent(c)
        assert pooled == {"f": 0, "r": 0, "z": zero}
        assert all(v <= 3 for v in draws.values())
        # every effective response was trained at least once, then left the pools exactly once:
        # retired (reuse cap) or pushed out of the bounded replay FIFO
        assert len(draws) == eff
        assert t["retired"] + t["replay_evicted"] == eff
