"""Trajectory store: advantages, idempotency, malformed input, sampling modes, staleness, reuse cap,
replay FIFO, capacity eviction, idempotent sample retries, reads.  Real Redis."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import redis

from buffer_testlib import assert_store_consistent, make_group
from common.schemas import Group, PromptTask
from services.buffer.client import BadArgumentError, BufferClient, MalformedGroupError
from services.buffer.protocol import store_keys

REWARDS = [1, 0, 0, 0, 1, 1, 0, 0]


def n_keys(client: BufferClient) -> int:
    return sum(1 for _ in client.r.scan_iter(match=f"{client.cfg.redis.namespace}:*"))


def counters(client: BufferClient) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.r.hgetall(client.keys.counters).items()}


def test_add_group_computes_advantages_and_marks_zero(client):
    res = client.add_group(make_group(0, REWARDS))
    assert res.stored and res.n_effective == 8
    assert res.advantages == pytest.approx([r - 0.375 for r in REWARDS], abs=1e-12)
    zero = client.add_group(make_group(1, [1.0] * 8))  # all correct: every advantage exactly 0
    assert zero.n_effective == 0 and zero.advantages == [0.0] * 8
    tenth = client.add_group(make_group(2, [0.1] * 8))  # float mean noise still gives exact zeros
    assert tenth.advantages == [0.0] * 8
    mixed = client.add_group(make_group(3, [0.0, 1.0, 0.5]))  # the response at the mean is not effective
    assert mixed.n_effective == 2 and mixed.advantages[2] == 0.0
    sz = client.sizes()
    assert (sz.fresh, sz.zero, sz.stored, sz.groups) == (10, 17, 27, 4)
    c = counters(client)
    assert c["eff_groups"] == 2 and c["allc_groups"] == 1 and c["allw_groups"] == 1  # 0.1 rewards count as wrong
    g = client.get_group("g-e0-t0")
    assert [s.advantage for s in g.samples] == pytest.approx(res.advantages)


def test_std_normalised_advantages(cfg):
    cfg.algorithm.grpo.std_normalize = True
    cfg.algorithm.grpo.adv_eps = 1e-6
    with BufferClient(cfg) as c:
        res = c.add_group(make_group(0, [1, 0, 0, 1, 1]))
    r = np.array([1, 0, 0, 1, 1], dtype=float)
    expect = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    assert res.advantages == pytest.approx(expect.tolist(), rel=1e-12)


def test_add_group_is_idempotent_by_group_id(client):
    g = make_group(0, REWARDS)
    first = client.add_group(g)
    before = counters(client), client.sizes()
    again = client.add_group(g)
    assert not again.stored and again.advantages == first.advantages and again.n_effective == 8
    # a retry with regenerated sample ids stores nothing either
    regen = dataclasses.replace(g, samples=[dataclasses.replace(s, sample_id=s.sample_id + "x") for s in g.samples])
    assert not client.add_group(regen).stored
    after = counters(client)
    assert client.sizes() == before[1]
    assert after["dup_groups"] == 2 and after["samples"] == before[0]["samples"] == 8
    assert client.get_sample(g.samples[0].sample_id + "x") is None
    assert [r.stored for r in client.add_groups([g, make_group(1, REWARDS)])] == [False, True]


def _malformed() -> list[tuple[str, object]]:
    g = make_group(0, REWARDS)
    s0 = g.samples[0]
    cases = [
        ("not a group", {"group_id": "x"}),
        ("empty samples", dataclasses.replace(g, samples=[])),
        ("empty group id", dataclasses.replace(g, group_id="")),
        ("sample of another group", dataclasses.replace(g, samples=[dataclasses.replace(s0, group_id="g-other")] + g.samples[1:])),
        ("duplicate sample ids", dataclasses.replace(g, samples=[s0, s0] + g.samples[2:])),
        ("nan reward", dataclasses.replace(g, samples=[dataclasses.replace(s0, reward=math.nan)] + g.samples[1:])),
        ("inf reward", dataclasses.replace(g, samples=[dataclasses.replace(s0, reward=math.inf)] + g.samples[1:])),
        ("string reward", dataclasses.replace(g, samples=[dataclasses.replace(s0, reward="1")] + g.samples[1:])),
        ("logprob length", dataclasses.replace(g, samples=[dataclasses.replace(s0, sampler_logprobs=np.zeros(2, np.float32))] + g.samples[1:])),
        ("token list not array", dataclasses.replace(g, samples=[dataclasses.replace(s0, response_token_ids=[1, 2, 3, 4])] + g.samples[1:])),
        ("negative version", dataclasses.replace(g, samples=[dataclasses.replace(s0, policy_version=-1)] + g.samples[1:])),
        ("task id mismatch", dataclasses.replace(g, samples=[dataclasses.replace(s0, task_id="other")] + g.samples[1:])),
        ("task not a task", dataclasses.replace(g, task="task")),
        ("whitespace id", dataclasses.replace(g, group_id="g 1")),
        ("uncodable dtype", dataclasses.replace(g, samples=[dataclasses.replace(s0, prompt_token_ids=np.array(["a"]))] + g.samples[1:])),
    ]
    return cases


@pytest.mark.parametrize("name,group", _malformed(), ids=[c[0] for c in _malformed()])
def test_malformed_group_is_rejected_and_writes_nothing(client, name, group):
    client.ensure_library()
    with pytest.raises(MalformedGroupError) as err:
        client.add_group(group)
    assert str(err.value)
    assert n_keys(client) == 0


def test_server_side_validation_writes_nothing(client):
    client.add_group(make_group(0, REWARDS))
    before = {k: client.r.dump(k) for k in client.r.scan_iter(match=f"{client.cfg.redis.namespace}:*")}
    # a sample id that another stored group already holds
    clash = make_group(1, REWARDS)
    clash.samples[3] = dataclasses.replace(clash.samples[3], sample_id="s-0-3")
    with pytest.raises(MalformedGroupError, match="already stored"):
        client.add_group(clash)
    # raw calls that bypass the Python validation: the Lua side checks too, and drops the payload
    # keys the same transaction wrote (MSETNX) for a group it refuses
    keys = store_keys(client.keys)
    gk, sk = client.keys.group_data("g-raw"), client.keys.sample_data("sid")
    good = ["g-raw", 1, 0, "1e-6", "1.0", 100, "0", 10, "c", "s", 0, "sid", "1", 0, 1]
    bad_calls = [
        (good[:12] + ["nan"] + good[13:], [gk, sk]),  # reward
        (good[:1] + [2] + good[2:], [gk, sk]),  # n does not match the arguments
        (good[:13] + ["1.5"] + good[14:], [gk, sk]),  # version
        ([""] + good[1:], [gk, sk]),  # empty group id
        (good, [gk, client.keys.sample_data("other")]),  # payload key of another sample
        (good, [gk]),  # payload key missing
    ]
    for args, extra in bad_calls:
        with client.r.pipeline(transaction=True) as p:
            p.msetnx({k: b"payload" for k in extra})
            p.fcall("rtk_add_group", len(keys) + len(extra), *keys, *extra, *args)
            replies = p.execute(raise_on_error=False)
        assert isinstance(replies[1], redis.ResponseError) and "RTK_BADARG" in str(replies[1]), replies
    # without the MSETNX the payloads are missing: refused too
    with pytest.raises(redis.ResponseError, match="payload key"):
        client.r.fcall("rtk_add_group", len(keys) + 2, *keys, gk, sk, *good)
    after = {k: client.r.dump(k) for k in client.r.scan_iter(match=f"{client.cfg.redis.namespace}:*")}
    assert after == before


def test_ssr_sample_draws_fresh_then_replay(client):
    client.add_group(make_group(0, REWARDS))
    client.add_group(make_group(1, [1] * 8))  # zero advantage: never drawn in ssr mode
    b = client.sample(6, policy_version=0, seed=1)
    assert len(b) == 6 and b.n_fresh == 6 and b.n_replay == 0 and b.replayed == [False] * 6
    assert b.n_effective_available == 8 and b.n_zero_available == 8
    assert all(s.advantage != 0 and s.group_id == "g-e0-t0" for s in b.samples)
    assert set(b.tasks) == {"e0-t0"} and b.tasks["e0-t0"].images  # images come with the task
    for s in b.samples:
        assert s.sampler_logprobs.shape == s.response_token_ids.shape and s.policy_version == 0
    # times_sampled counts this draw, per copy
    seen: dict[str, int] = {}
    for s in b.samples:
        seen[s.sample_id] = seen.get(s.sample_id, 0) + 1
        assert s.times_sampled == seen[s.sample_id]
    drawn = set(seen)
    sz = client.sizes()
    assert sz.fresh == 8 - len(drawn) and sz.replay == len(drawn)
    # fewer fresh than requested: the rest comes from the replay pool
    b2 = client.sample(10, policy_version=0, seed=2)
    assert len(b2) == 10 and b2.n_fresh == 8 - len(drawn) and b2.n_replay == 10 - b2.n_fresh
    assert b2.replayed == [False] * b2.n_fresh + [True] * b2.n_replay
    assert all(s.sample_id in drawn for s, rep in b2.items() if rep)


def test_nothing_drawable_returns_empty_batch_quickly(client):
    t0 = time.perf_counter()
    assert len(client.sample(256, policy_version=0)) == 0
    client.add_group(make_group(0, [0] * 8))  # all wrong: no effective response at all
    b = client.sample(256, policy_version=0)
    assert len(b) == 0 and b.n_effective_available == 0 and b.n_zero_available == 8
    assert time.perf_counter() - t0 < 2.0
    assert len(client.sample(256, mode="filter", policy_version=0)) == 0
    g = client.sample(256, mode="grpo", policy_version=0)  # plain GRPO uses everything
    assert len(g) == 8 and all(s.advantage == 0 for s in g.samples)
    assert counters(client)["empty_sample_calls"] == 3


def test_filter_mode_repeats_effective_uniformly(cfg):
    cfg.algorithm.ssr.reuse_cap = 100
    with BufferClient(cfg) as c:
        c.add_group(make_group(0, [1, 0, 0]))  # advantages 2/3, -1/3, -1/3
        c.add_group(make_group(1, [1, 1]))
        b = c.sample(9, mode="filter", policy_version=0, seed=3)
        counts: dict[str, int] = {}
        for s in b.samples:
            counts[s.sample_id] = counts.get(s.sample_id, 0) + 1
        assert len(b) == 9 and sorted(counts.values()) == [3, 3, 3]  # each effective one, repeated evenly
        assert c.sizes().fresh == 0 and c.sizes().replay == 3
        # more effective than n: n distinct ones, uniformly
        for i in range(2, 6):
            c.add_group(make_group(i, REWARDS))
        b = c.sample(16, mode="filter", policy_version=0, seed=4)
        assert len({s.sample_id for s in b.samples}) == 16


def test_filter_mode_respects_reuse_cap(cfg):
    cfg.algorithm.ssr.reuse_cap = 2
    with BufferClient(cfg) as c:
        c.add_group(make_group(0, [1, 0, 0]))
        b = c.sample(9, mode="filter", policy_version=0)
        assert len(b) == 6 and max(s.times_sampled for s in b.samples) == 2
        assert c.sizes().replay == 0  # used up: retired, not replayed


def test_grpo_mode_uses_everything_without_repeats(client):
    client.add_group(make_group(0, REWARDS))
    client.add_group(make_group(1, [1] * 8))
    b = client.sample(12, mode="grpo", policy_version=0, seed=5)
    ids = [s.sample_id for s in b.samples]
    assert len(ids) == 12 == len(set(ids))
    b2 = client.sample(12, mode="grpo", policy_version=0, seed=6)
    assert len(b2) == 4 and not set(ids) & {s.sample_id for s in b2.samples}
    sz = client.sizes()
    assert sz.fresh == 0 and sz.zero == 0 and sz.replay == 8  # zero-advantage ones are never replayed
    assert assert_store_consistent(client) == {"f": 0, "r": 8, "z": 0}


def test_staleness_bound_evicts_lagging_responses(cfg):
    cfg.algorithm.ssr.staleness_bound = 2
    with BufferClient(cfg) as c:
        c.add_group(make_group(0, REWARDS, version=0))
        c.add_group(make_group(1, REWARDS, version=3))
        c.add_group(make_group(2, [1] * 8, version=0))
        b = c.sample(6, policy_version=4, seed=7)
        assert {s.policy_version for s in b.samples} == {3}  # lag 4 > 2 excluded, lag 1 kept
        assert b.n_effective_available == 8
        assert counters(c)["stale_evicted"] == 16 and counters(c)["stale_evicted_fresh"] == 8
        assert c.get_sample_record("s-0-0").pool == "stale"
        # replay entries are off-policy by design: the fresh-pool bound does not evict them
        replay, fresh = c.sizes().replay, c.sizes().fresh
        assert replay > 0
        again = c.sample(4, policy_version=9, seed=8)
        assert len(again) == 4 and all(again.replayed) and {s.policy_version for s in again.samples} == {3}
        assert c.sizes().fresh == 0 and c.sizes().replay > 0
        assert counters(c).get("replay_aged_out", 0) == 0 and counters(c)["stale_evicted"] == 16 + fresh
        assert_store_consistent(c)


def test_replay_entries_age_out_by_their_own_limit(cfg):
    cfg.algorithm.ssr.staleness_bound = 0
    cfg.algorithm.ssr.replay_max_age = 5
    with BufferClient(cfg) as c:
        c.add_group(make_group(0, REWARDS, version=0))
        assert len(c.sample(8, mode="filter", policy_version=0, seed=1)) == 8  # version-0 responses enter replay
        c.add_group(make_group(1, REWARDS, version=2))
        assert len(c.sample(8, mode="filter", policy_version=2, seed=2)) == 8  # version-2 responses enter replay
        assert c.sizes().replay == 16
        c.sample(0, policy_version=5)  # lag 5 for version 0: not beyond the limit
        assert c.sizes().replay == 16 and counters(c).get("replay_aged_out", 0) == 0
        left = c.sample(4, policy_version=6, seed=3)  # lag 6 > 5: version 0 leaves before the draw
        assert counters(c)["replay_aged_out"] == 8 and c.get_sample_record("s-0-0").pool == "stale"
        assert len(left) == 4 and all(left.replayed) and {s.policy_version for s in left.samples} == {2}
        c.sample(0, policy_version=8)
        assert c.sizes().replay == 0 and counters(c)["replay_aged_out"] == 16
        assert assert_store_consistent(c) == {"f": 0, "r": 0, "z": 0}


def test_reuse_cap_bounds_training_per_response(cfg):
    cfg.algorithm.ssr.reuse_cap = 3
    with BufferClient(cfg) as c:
        c.add_group(make_group(0, REWARDS))
        total: dict[str, int] = {}
        for i in range(20):
            for s in c.sample(8, policy_version=0, seed=100 + i).samples:
                total[s.sample_id] = total.get(s.sample_id, 0) + 1
                assert s.times_sampled <= 3
        assert max(total.values()) <= 3 and sum(total.values()) == 24  # 8 responses x cap 3, then empty
        assert c.sizes().fresh == 0 and c.sizes().replay == 0
        assert all(c.get_sample_record(sid).pool == "retired" for sid in total)
        assert_store_consistent(c)


def test_replay_pool_is_a_bounded_fifo(cfg):
    cfg.algorithm.ssr.replay_capacity = 5
    with BufferClient(cfg) as c:
        for i in range(4):
            c.add_group(make_group(i, REWARDS))
        order = []
        for i in range(4):
            b = c.sample(8, mode="filter", policy_version=0, seed=i)  # moves one group's worth at a time
            order += [s.sample_id for s in b.samples]
        assert c.sizes().replay == 5
        replay = [sid for sid in order if c.get_sample_record(sid).pool == "replay"]
        assert replay == order[-5:]  # the most recently trained survive
        assert counters(c)["replay_evicted"] == 27
        assert assert_store_consistent(c) == {"f": 0, "r": 5, "z": 0}


def test_capacity_evicts_oldest_groups(cfg):
    cfg.algorithm.ssr.capacity = 20
    with BufferClient(cfg) as c:
        for i in range(5):
            c.add_group(make_group(i, REWARDS))
        assert c.get_group("g-e0-t0") is None and c.get_sample("s-0-0") is None
        assert c.get_group("g-e0-t3") is not None and c.get_group("g-e0-t4") is not None
        sz = c.sizes()
        assert sz.stored == 16 and sz.groups == 2 and sz.fresh == 16
        cnt = counters(c)
        assert cnt["cap_evicted_groups"] == 3 and cnt["cap_evicted_samples"] == 24
        assert len(c.sample(10, policy_version=0, seed=1)) == 10
        sz = c.sizes()
        assert c.r.zcard(c.keys.by_version) == sz.fresh + sz.zero and c.r.zcard(c.keys.replay_fifo) == sz.replay
        assert sz.fresh + sz.replay + sz.zero >= 16 - 2
        assert_store_consistent(c)
        for i in range(5, 12):  # evicted indices are recycled
            c.add_group(make_group(i, REWARDS))
        assert c.r.hlen(c.keys.sample_meta) == 16 and int(c.r.hget(c.keys.counters, "next_idx")) <= 32
        assert_store_consistent(c)


def test_sample_retry_with_request_id_is_idempotent(client):
    client.add_group(make_group(0, REWARDS))
    b1 = client.sample(5, policy_version=0, request_id="req-1")
    snap = counters(client), client.sizes()
    b2 = client.sample(5, policy_version=0, request_id="req-1")
    assert [s.sample_id for s in b1.samples] == [s.sample_id for s in b2.samples]
    assert [s.times_sampled for s in b1.samples] == [s.times_sampled for s in b2.samples]
    assert b1.replayed == b2.replayed and (counters(client), client.sizes()) == snap


def test_seeded_sampling_is_reproducible(cfg):
    ids = []
    for _ in range(2):
        with BufferClient(cfg) as c:
            c.clear()
            for i in range(3):
                c.add_group(make_group(i, [i % 2, 1, 0, 0.5]))
            ids.append([s.sample_id for s in c.sample(12, policy_version=0, seed=42).samples])
    assert ids[0] == ids[1]


def test_reads_round_trip(client):
    g = make_group(0, REWARDS, tokens=33)
    client.add_group(g)
    got = client.get_group(g.group_id)
    assert isinstance(got, Group) and isinstance(got.task, PromptTask)
    assert got.task.images == g.task.images and got.task.question == g.task.question
    for a, b in zip(g.samples, got.samples):
        assert a.sample_id == b.sample_id and a.response_text == b.response_text
        np.testing.assert_array_equal(a.response_token_ids, b.response_token_ids)
        np.testing.assert_array_equal(a.sampler_logprobs, b.sampler_logprobs)
    rec = client.get_sample_record("s-0-2")
    assert rec.pool == "fresh" and rec.group_id == g.group_id and rec.sample.advantage == pytest.approx(-0.375)
    assert client.get_group("nope") is None and client.get_sample("nope") is None and client.get_sample("") is None


def test_bad_sample_arguments(client):
    for kwargs in ({"n": -1}, {"n": 2.5}, {"n": 1 << 30}, {"n": 4, "mode": "ppo"}, {"n": 4, "policy_version": -3}):
        kw = {"policy_version": 0, **kwargs}
        with pytest.raises(BadArgumentError):
            client.sample(**kw)
    assert n_keys(client) == 0


def test_clear_empties_the_namespace(client):
    client.add_group(make_group(0, REWARDS))
    client.sample(4, policy_version=0)
    assert client.clear() > 0 and n_keys(client) == 0
    assert client.sizes().stored == 0 and client.add_group(make_group(0, REWARDS)).stored


def test_library_is_reloaded_when_missing_or_outdated(private_redis):
    from buffer_testlib import make_cfg

    srv = private_redis(appendonly=False)
    cfg = make_cfg(srv.url)
    c = BufferClient(cfg)
    c.add_group(make_group(0, REWARDS))
    c.r.function_flush()  # e.g. a server restarted without persistence
    assert c.add_group(make_group(1, REWARDS)).stored
    c.r.function_load("#!lua name=rethinker_buffer\nredis.register_function('rtk_version', function() return 'old' end)", replace=True)
    c2 = BufferClient(cfg)
    assert len(c2.sample(4, policy_version=0)) == 4  # a new client replaces the outdated library
    assert c2.r.fcall_ro("rtk_version", 0).decode() != "old"
    c.close()
    c2.close()


def test_store_of_another_layout_is_refused(client):
    client.add_group(make_group(0, REWARDS))
    client.r.hset(client.keys.store_meta, "layout", "1")
    with pytest.raises(BadArgumentError, match="layout"):
        client.sample(4, policy_version=0)
    with pytest.raises(MalformedGroupError, match="layout"):
        client.add_group(make_group(1, REWARDS))
    assert client.get_group("g-e0-t1") is None and client.r.exists(client.keys.group_data("g-e0-t1")) == 0


def test_limits_of_the_record_layout_are_checked(cfg):
    cfg.algorithm.ssr.capacity = 20_000_000
    with pytest.raises(BadArgumentError, match="shard"):
        BufferClient(cfg)
    cfg.algorithm.ssr.capacity = 1000
    cfg.algorithm.ssr.reuse_cap = 1 << 31
    with pytest.raises(BadArgumentError, match="reuse_cap"):
        BufferClient(cfg)
