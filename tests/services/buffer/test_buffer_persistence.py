"""Durability: a private redis-server with AOF is killed with SIGKILL while a writer is adding
groups; after a restart every acknowledged write is there (contents, counters, fresh/replay
membership, queue, policy version), the store invariants hold, and clients carry on (reconnect with
backoff, library still loaded)."""

from __future__ import annotations

import threading
import time

import redis

from buffer_testlib import assert_store_consistent, make_cfg, make_group, make_task
from common.schemas import PolicyVersion
from services.buffer.client import BufferClient

REWARDS = [1, 0, 0, 0, 1, 1, 0, 0]


def _state(c: BufferClient) -> dict:
    groups = {}
    for gid in sorted(k.decode() for k in c.r.hkeys(c.keys.group_meta)):
        g, pools = c.get_group_record(gid)
        groups[gid] = [(s.sample_id, s.advantage, s.times_sampled, pools[s.sample_id]) for s in g.samples]
    q = c.queue_stats()
    return {
        "groups": groups,
        "counters": c.r.hgetall(c.keys.counters),
        "sizes": c.sizes(),
        "queue": (q.inflight, q.pending),
        "policy": c.policy_version(),
    }


def test_kill9_and_restart_loses_nothing_acknowledged(private_redis):
    srv = private_redis(appendonly=True, fsync="always")
    cfg = make_cfg(srv.url)
    cfg.algorithm.ssr.replay_capacity = 12
    c = BufferClient(cfg)
    for i in range(30):
        c.add_group(make_group(i, REWARDS if i % 3 else [1] * 8))
    for seed in range(4):
        c.sample(10, policy_version=0, seed=seed)
    c.publish_tasks([make_task(i) for i in range(6)])
    claimed = c.claim_tasks("rollout-1", 4)
    c.ack_task(claimed[0].entry_id)
    c.publish_policy_version(PolicyVersion(version=2, step=20))

    # a writer keeps adding groups while the server is killed; it records what was acknowledged
    acked: list[str] = []
    stop = threading.Event()
    wcfg = make_cfg(srv.url)
    wcfg.redis.namespace = cfg.redis.namespace
    wcfg.redis.retry_attempts = 0
    writer = BufferClient(wcfg)

    def write() -> None:
        i = 1000
        while not stop.is_set():
            g = make_group(i, REWARDS)
            try:
                writer.add_group(g)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            acked.append(g.group_id)
            i += 1

    th = threading.Thread(target=write)
    th.start()
    time.sleep(0.3)
    srv.kill9()
    stop.set()
    th.join(timeout=10)
    assert len(acked) > 5
    # the state as the acknowledged writes left it, read after restart by the *old* client, which
    # reconnects transparently (redis-py retry with exponential backoff)
    srv.start()
    after = _state(c)
    for gid in acked:
        assert gid in after["groups"], f"acknowledged group {gid} lost"
    assert after["queue"] == (5, 3)  # 6 published, 1 acked, 3 still pending at rollout-1
    assert after["policy"] == PolicyVersion(version=2, step=20, published_at=after["policy"].published_at)
    pooled = assert_store_consistent(c)
    assert pooled["r"] == after["sizes"].replay > 0 and pooled["f"] == after["sizes"].fresh > 0
    n_groups = len(after["groups"])
    assert int(after["counters"][b"groups"]) == n_groups and len(acked) + 30 <= n_groups <= len(acked) + 31

    # a clean restart (SIGKILL again, no writer) reproduces exactly the same state
    srv.kill9()
    srv.start()
    fresh_client = BufferClient(cfg)
    assert _state(fresh_client) == after
    # and work goes on: pending tasks are still claimable by reclaim, sampling continues
    b = fresh_client.sample(8, policy_version=2, seed=1)
    assert len(b) == 8
    assert fresh_client.ack_task(claimed[1].entry_id)
    for cl in (c, writer, fresh_client):
        cl.close()


def test_client_retries_through_a_restart(private_redis):
    srv = private_redis(appendonly=True, fsync="always")
    cfg = make_cfg(srv.url)
    c = BufferClient(cfg)
    c.add_group(make_group(0, REWARDS))
    srv.kill9()

    def restart_later() -> None:
        time.sleep(0.4)
        srv.start()

    th = threading.Thread(target=restart_later)
    th.start()
    t0 = time.perf_counter()
    res = c.add_group(make_group(1, REWARDS))  # blocks in backoff until the server is back
    th.join()
    assert res.stored and time.perf_counter() - t0 >= 0.3
    assert c.sizes().groups == 2
    c.close()
