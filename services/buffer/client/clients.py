"""``BufferClient`` (sync) and ``AsyncBufferClient`` (asyncio): a connection plus the commands.

Each public method is one command of a concern module, run by the class's executor
(``transport.sync_method`` / ``transport.async_method``); the classes themselves only hold the
connection and the library check.  Both list the same methods in the same order.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from common.config import RethinkerConfig
from common.redis_conn import async_client, sync_client
from services.buffer.client import admin, queue, registry, store, versions
from services.buffer.client.state import ClientState
from services.buffer.client.transport import async_method, sync_method
from services.buffer.library import ensure_library, ensure_library_async


class BufferClient(ClientState):
    """Synchronous client (rollout servers, learner, tests)."""

    def __init__(self, cfg: RethinkerConfig, *, client: redis.Redis | None = None, shard: str = "s") -> None:
        super().__init__(cfg, shard)
        self.r = client if client is not None else sync_client(cfg.redis)

    def ensure_library(self, *, force: bool = False) -> str:
        """Load the buffer's function library unless the server runs this version; returns it."""
        version = ensure_library(self.r, force=force)
        self._loaded = True
        return version

    def ping(self) -> bool:
        return bool(self.r.ping())

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> "BufferClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # prompt queue
    publish_tasks = sync_method(queue.publish_tasks)
    claim_tasks = sync_method(queue.claim_tasks)
    reclaim_own = sync_method(queue.reclaim_own)
    extend_claims = sync_method(queue.extend_claims)
    ack_task = sync_method(queue.ack_task)
    release_task = sync_method(queue.release_task)
    queue_stats = sync_method(queue.queue_stats)
    queue_depth = sync_method(queue.queue_depth)
    pending_tasks = sync_method(queue.pending_tasks)
    inflight_tasks = sync_method(queue.inflight_tasks)
    can_publish = sync_method(queue.can_publish)
    # trajectory store
    add_group = sync_method(store.add_group)
    add_groups = sync_method(store.add_groups)
    sample = sync_method(store.sample)
    sizes = sync_method(store.sizes)
    wait_for_samples = sync_method(store.wait_for_samples)
    get_sample_record = sync_method(store.get_sample_record)
    get_sample = sync_method(store.get_sample)
    get_group_record = sync_method(store.get_group_record)
    get_group = sync_method(store.get_group)
    store_stats_raw = sync_method(store.store_stats_raw)
    # policy version
    publish_policy_version = sync_method(versions.publish_policy_version)
    policy_version = sync_method(versions.policy_version)
    reserve_policy_version = sync_method(versions.reserve_policy_version)
    highest_policy_version = sync_method(versions.highest_policy_version)
    # rollout-server registry
    register_server = sync_method(registry.register_server)
    heartbeat = sync_method(registry.heartbeat)
    unregister_server = sync_method(registry.unregister_server)
    live_servers = sync_method(registry.live_servers)
    # every key group
    stats = sync_method(admin.stats)
    clear = sync_method(admin.clear)
    snapshot = sync_method(admin.snapshot)


class AsyncBufferClient(ClientState):
    """asyncio client with the same methods as ``BufferClient`` (the HTTP app, async services)."""

    def __init__(self, cfg: RethinkerConfig, *, client: aioredis.Redis | None = None, shard: str = "s") -> None:
        super().__init__(cfg, shard)
        self.r = client if client is not None else async_client(cfg.redis)

    async def ensure_library(self, *, force: bool = False) -> str:
        """Load the buffer's function library unless the server runs this version; returns it."""
        version = await ensure_library_async(self.r, force=force)
        self._loaded = True
        return version

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()

    async def __aenter__(self) -> "AsyncBufferClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # prompt queue
    publish_tasks = async_method(queue.publish_tasks)
    claim_tasks = async_method(queue.claim_tasks)
    reclaim_own = async_method(queue.reclaim_own)
    extend_claims = async_method(queue.extend_claims)
    ack_task = async_method(queue.ack_task)
    release_task = async_method(queue.release_task)
    queue_stats = async_method(queue.queue_stats)
    queue_depth = async_method(queue.queue_depth)
    pending_tasks = async_method(queue.pending_tasks)
    inflight_tasks = async_method(queue.inflight_tasks)
    can_publish = async_method(queue.can_publish)
    # trajectory store
    add_group = async_method(store.add_group)
    add_groups = async_method(store.add_groups)
    sample = async_method(store.sample)
    sizes = async_method(store.sizes)
    wait_for_samples = async_method(store.wait_for_samples)
    get_sample_record = async_method(store.get_sample_record)
    get_sample = async_method(store.get_sample)
    get_group_record = async_method(store.get_group_record)
    get_group = async_method(store.get_group)
    store_stats_raw = async_method(store.store_stats_raw)
    # policy version
    publish_policy_version = async_method(versions.publish_policy_version)
    policy_version = async_method(versions.policy_version)
    reserve_policy_version = async_method(versions.reserve_policy_version)
    highest_policy_version = async_method(versions.highest_policy_version)
    # rollout-server registry
    register_server = async_method(registry.register_server)
    heartbeat = async_method(registry.heartbeat)
    unregister_server = async_method(registry.unregister_server)
    live_servers = async_method(registry.live_servers)
    # every key group
    stats = async_method(admin.stats)
    clear = async_method(admin.clear)
    snapshot = async_method(admin.snapshot)
