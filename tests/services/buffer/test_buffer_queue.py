"""Prompt queue: publish/claim/ack, duplicate detection per epoch, backpressure, reclaim of a dead
consumer's tasks, release on shutdown, garbage entries.  Real Redis streams."""

from __future__ import annotations

import time

import pytest

from buffer_testlib import make_task
from services.buffer.client import BadArgumentError, BufferClient


def test_publish_claim_ack(client):
    res = client.publish_tasks([make_task(i) for i in range(5)])
    assert res.published == 5 and res.duplicates == [] and res.deferred == []
    assert (client.queue_depth(), client.pending_tasks(), client.inflight_tasks()) == (5, 0, 5)
    a = client.claim_tasks("server-a", 3)
    b = client.claim_tasks("server-b", 3)
    assert [t.task.task_id for t in a + b] == [f"e0-t{i}" for i in range(5)]
    assert all(t.deliveries == 1 for t in a + b)
    assert a[0].task.images == make_task(0).images and a[0].task.question == make_task(0).question
    assert (client.queue_depth(), client.pending_tasks(), client.inflight_tasks()) == (0, 5, 5)
    assert client.ack_task(a[0].entry_id) and not client.ack_task(a[0].entry_id)  # idempotent
    assert (client.pending_tasks(), client.inflight_tasks()) == (4, 4)
    for t in a[1:] + b:
        client.ack_task(t.entry_id)
    assert (client.queue_depth(), client.pending_tasks(), client.inflight_tasks()) == (0, 0, 0)
    assert client.r.xlen(client.keys.task_stream) == 0  # acked entries are deleted


def test_duplicates_within_an_epoch_are_detected(client):
    assert client.publish_tasks([make_task(1), make_task(2)]).published == 2
    res = client.publish_tasks([make_task(2), make_task(3), make_task(3)])
    assert res.published == 1 and res.duplicates == ["e0-t2", "e0-t3"]
    nxt = client.publish_tasks([make_task(2, epoch=1)])  # the next epoch may publish it again
    assert nxt.published == 1 and nxt.duplicates == []
    assert client.inflight_tasks() == 4


def test_backpressure_bounds_inflight_tasks(cfg):
    cfg.buffer.max_inflight_tasks = 4
    with BufferClient(cfg) as c:
        res = c.publish_tasks([make_task(i) for i in range(6)])
        assert res.published == 4 and res.deferred == ["e0-t4", "e0-t5"] and c.can_publish() == 0
        claimed = c.claim_tasks("s", 2)
        assert c.can_publish() == 0  # claimed but not acked still counts
        c.ack_task(claimed[0].entry_id)
        assert c.can_publish() == 1
        again = c.publish_tasks([make_task(i) for i in range(4, 6)])
        assert again.published == 1 and again.deferred == ["e0-t5"]
        assert c.publish_tasks([make_task(5)], force=True).published == 1
        assert c.inflight_tasks() == 5


def test_dead_consumer_tasks_are_reclaimed(cfg):
    cfg.buffer.reclaim_idle_s = 1.0
    with BufferClient(cfg) as c:
        c.publish_tasks([make_task(i) for i in range(3)])
        dead = c.claim_tasks("dead-server", 2)
        assert len(dead) == 2
        live = c.claim_tasks("live-server", 5, block_ms=0)
        assert [t.task.task_id for t in live] == ["e0-t2"]  # not yet idle long enough
        time.sleep(1.1)
        got = c.claim_tasks("live-server", 5, block_ms=0)
        assert sorted(t.task.task_id for t in got) == ["e0-t0", "e0-t1"]
        assert all(t.deliveries == 2 for t in got)
        assert not c.ack_task("0-1")
        for t in got + live:
            assert c.ack_task(t.entry_id)
        assert c.ack_task(dead[0].entry_id) is False  # the dead server's late ack is harmless
        assert c.inflight_tasks() == 0


def test_a_restarted_consumer_reclaims_its_own_pending_tasks_at_once(cfg):
    cfg.buffer.reclaim_idle_s = 600.0
    with BufferClient(cfg) as c:
        c.publish_tasks([make_task(i) for i in range(3)])
        held = c.claim_tasks("server-a", 2)  # then server-a dies
        assert c.claim_tasks("server-b", 5, block_ms=0)[0].task.task_id == "e0-t2"
        assert c.claim_tasks("server-b", 5, block_ms=0) == []  # not idle for reclaim_idle_s yet
        assert [t.task.task_id for t in c.reclaim_own("server-b", 5)] == ["e0-t2"]  # only its own
        back = c.reclaim_own("server-a", 5)  # server-a restarted under its id: no idle wait
        assert [t.task.task_id for t in back] == [t.task.task_id for t in held]
        assert all(t.deliveries == 2 for t in back)
        assert c.reclaim_own("server-unknown", 5) == []


def test_release_gives_work_back_at_once(client):
    client.publish_tasks([make_task(0)])
    [t] = client.claim_tasks("stopping-server", 1)
    assert client.release_task(t.entry_id) and not client.release_task(t.entry_id)
    assert (client.queue_depth(), client.pending_tasks(), client.inflight_tasks()) == (1, 0, 1)
    [t2] = client.claim_tasks("other-server", 1, block_ms=0)
    assert t2.task.task_id == t.task.task_id and t2.deliveries == 2 and t2.entry_id != t.entry_id
    assert client.ack_task(t2.entry_id) and client.inflight_tasks() == 0


def test_claim_blocks_then_returns_empty(client):
    t0 = time.perf_counter()
    assert client.claim_tasks("s", 4, block_ms=200) == []
    assert 0.15 < time.perf_counter() - t0 < 3.0


def test_garbage_entries_are_dropped(client):
    client.publish_tasks([make_task(0)])
    client.r.xadd(client.keys.task_stream, {"t": "junk", "d": b"not a frame", "r": 0})
    client.r.xadd(client.keys.task_stream, {"x": "1"})
    got = client.claim_tasks("s", 5, block_ms=0)
    assert [t.task.task_id for t in got] == ["e0-t0"]
    assert client.inflight_tasks() == 1 and client.pending_tasks() == 1


def test_bad_queue_arguments(client):
    with pytest.raises(BadArgumentError):
        client.publish_tasks(["not a task"])
    with pytest.raises(BadArgumentError):
        client.publish_tasks([make_task("has space")])
    with pytest.raises(BadArgumentError):
        client.claim_tasks("", 1)
    assert client.publish_tasks([]).published == 0


def test_queue_survives_clear(client):
    client.publish_tasks([make_task(0)])
    client.clear()
    assert client.inflight_tasks() == 0
    assert client.publish_tasks([make_task(0)]).published == 1  # the consumer group is recreated
    assert [t.task.task_id for t in client.claim_tasks("s", 1, block_ms=0)] == ["e0-t0"]


def test_extend_claims_keeps_long_work_from_being_reclaimed(cfg):
    cfg.buffer.reclaim_idle_s = 1.0
    with BufferClient(cfg) as c:
        c.publish_tasks([make_task(0)])
        [t] = c.claim_tasks("slow-server", 1)
        time.sleep(0.7)
        assert c.extend_claims("slow-server", [t.entry_id]) == 1
        time.sleep(0.5)
        assert c.claim_tasks("other", 1, block_ms=0) == []  # idle only 0.5 s since the extension
        time.sleep(0.7)
        [t2] = c.claim_tasks("other", 1, block_ms=0)
        assert t2.entry_id == t.entry_id and t2.deliveries == 2
