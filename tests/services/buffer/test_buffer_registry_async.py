"""Policy versions, the rollout-server registry, and the asyncio client's parity with the sync one."""

from __future__ import annotations

import json
import time

import pytest

from buffer_testlib import make_group, make_task
from common.schemas import PolicyVersion
from services.buffer.client import BadArgumentError, MalformedGroupError

REWARDS = [1, 0, 0, 0, 1, 1, 0, 0]


def test_policy_version_publish_and_event(client):
    assert client.policy_version() is None
    sub = client.r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(client.keys.policy_channel)
    pv = PolicyVersion(version=3, step=30, num_bytes=1234, published_at=1.5)
    client.publish_policy_version(pv)
    assert client.policy_version() == pv
    msg = None
    deadline = time.monotonic() + 3
    while msg is None and time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.2)
    assert msg is not None and json.loads(msg["data"]) == {"type": "version", "version": 3, "step": 30, "source": "buffer"}
    sub.close()
    client.publish_policy_version(PolicyVersion(version=4, step=40, num_bytes=99))
    assert (client.policy_version().step, client.policy_version().num_bytes) == (40, 99)
    assert client.stats()["policy_version"] == 4
    with pytest.raises(BadArgumentError):
        client.publish_policy_version(PolicyVersion(version=-1, step=0))


def test_server_registry_heartbeats_expire(client):
    client.register_server("srv-a", {"url": "http://127.0.0.1:1", "engine": "hf"}, ttl_s=1.0)
    client.register_server("srv-b", {"url": "http://127.0.0.1:2"}, ttl_s=30)
    assert client.live_servers() == {"srv-a": {"url": "http://127.0.0.1:1", "engine": "hf"}, "srv-b": {"url": "http://127.0.0.1:2"}}
    time.sleep(0.6)
    client.heartbeat("srv-a", {"url": "http://127.0.0.1:1", "loaded_version": 2}, ttl_s=1.0)
    time.sleep(0.6)
    assert client.live_servers()["srv-a"]["loaded_version"] == 2  # kept alive by the heartbeat
    time.sleep(1.1)
    assert set(client.live_servers()) == {"srv-b"}  # expired heartbeat: not live (and pruned)
    assert client.r.hexists(client.keys.rollout_servers, "srv-a") == 0
    client.unregister_server("srv-b")
    assert client.live_servers() == {}
    with pytest.raises(BadArgumentError):
        client.register_server("bad id", {}, ttl_s=1)
    with pytest.raises(BadArgumentError):
        client.heartbeat("x", {"f": object()}, ttl_s=1)  # info must be JSON


async def test_async_client_parity(aclient, client):
    # store
    res = await aclient.add_group(make_group(0, REWARDS))
    assert res.stored and res.n_effective == 8
    assert not (await aclient.add_group(make_group(0, REWARDS))).stored
    assert [r.stored for r in await aclient.add_groups([make_group(1, REWARDS), make_group(2, [1] * 4)])] == [True, True]
    with pytest.raises(MalformedGroupError):
        await aclient.add_group(make_group(3, [float("nan")] * 2))
    assert await aclient.wait_for_samples(16, timeout_s=1) == 16
    t0 = time.perf_counter()
    assert await aclient.wait_for_samples(100, timeout_s=0.2) == 16
    assert time.perf_counter() - t0 >= 0.15
    assert await aclient.wait_for_samples(20, timeout_s=0.1, mode="grpo") == 20
    b = await aclient.sample(8, policy_version=0, seed=3, request_id="r1")
    assert len(b) == 8 and b.tasks and all(not r for r in b.replayed)
    b_sync = client.sample(8, policy_version=0, request_id="r1")  # same request id: same batch
    assert [s.sample_id for s in b.samples] == [s.sample_id for s in b_sync.samples]
    assert (await aclient.get_group("g-e0-t1")).samples[0].advantage == pytest.approx(0.625)
    rec = await aclient.get_sample_record(b.samples[0].sample_id)
    assert rec.pool in ("replay", "retired") and await aclient.get_sample("missing") is None
    st = await aclient.stats()
    assert st["totals"]["groups"] == 3 and st["sizes"] == client.stats()["sizes"]
    # queue
    pub = await aclient.publish_tasks([make_task(i) for i in range(3)] + [make_task(0)])
    assert pub.published == 3 and pub.duplicates == ["e0-t0"]
    claimed = await aclient.claim_tasks("a", 2)
    assert await aclient.pending_tasks() == 2 and await aclient.queue_depth() == 1
    assert await aclient.release_task(claimed[1].entry_id)
    assert await aclient.ack_task(claimed[0].entry_id)
    assert await aclient.inflight_tasks() == 2 and await aclient.can_publish() == 62
    assert await aclient.extend_claims("a", []) == 0
    # versions and registry
    await aclient.publish_policy_version(PolicyVersion(version=7, step=70))
    assert (await aclient.policy_version()).version == 7 and client.policy_version().version == 7
    await aclient.register_server("s1", {"url": "u"}, ttl_s=10)
    assert await aclient.live_servers() == {"s1": {"url": "u"}}
    await aclient.unregister_server("s1")
    assert await aclient.live_servers() == {}
    assert await aclient.clear() > 0 and (await aclient.sizes()).stored == 0
