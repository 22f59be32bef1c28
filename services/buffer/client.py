"""Clients of the SSR buffer: ``BufferClient`` (sync) and ``AsyncBufferClient`` (asyncio).

Rollout servers and the learner import this module; nothing else of ``services.buffer`` is public.
Both clients have the same methods (the async ones are coroutines):

prompt queue   publish_tasks, claim_tasks, reclaim_own, extend_claims, ack_task, release_task, queue_depth,
               pending_tasks, inflight_tasks, can_publish, queue_stats
store          add_group, add_groups, sample, wait_for_samples, sizes, get_group, get_group_record,
               get_sample, get_sample_record, stats, clear, snapshot
versions       publish_policy_version, policy_version, reserve_policy_version, highest_policy_version
registry       register_server, heartbeat, unregister_server, live_servers

All state lives in Redis; every state change is one Redis Function call, atomic (``add_group``
sends its payloads with MSETNX in the same MULTI/EXEC).  Connections retry with exponential backoff
on connection errors (``common.redis_conn``) and every call is safe to repeat: ``add_group`` by
group id, ``sample`` by a request id cached server-side for ``buffer.request_ttl_s``,
``ack_task``/``release_task`` by entry id, publication by (epoch, prompt id).  A server that lost
the function library is detected and the library reloaded.  See docs/buffer.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack
import redis
import redis.asyncio as aioredis

from common.codec import encode
from common.config import RethinkerConfig
from common.redis_conn import async_client, sync_client
from common.redis_keys import RedisKeys
from common.schemas import Group, PolicyVersion, PromptTask, Sample
from common.schemas.buffer import (
    AddGroupResult,
    ClaimedTask,
    PublishResult,
    QueueStats,
    SampledBatch,
    SampleRecord,
    StoreSizes,
)
from services.buffer import protocol as P
from services.buffer.fastcodec import task_of_group_frame
from services.buffer.library import ensure_library, ensure_library_async, is_missing_function
from services.buffer.protocol import BadArgumentError, BufferError, MalformedGroupError
from services.buffer.stats import STATS_MAX_LAG, build_stats

__all__ = [
    "AddGroupResult",
    "AsyncBufferClient",
    "BadArgumentError",
    "BufferClient",
    "BufferError",
    "ClaimedTask",
    "MalformedGroupError",
    "PublishResult",
    "QueueStats",
    "SampleRecord",
    "SampledBatch",
    "StoreSizes",
]

SNAPSHOT_MAGIC = b"RTKSNAP1"


def _new_seed() -> int:
    return random.SystemRandom().getrandbits(31)


def _mode(cfg: RethinkerConfig, mode: str | None) -> str:
    return cfg.algorithm.ssr.mode if mode is None else mode


class _Common:
    def __init__(self, cfg: RethinkerConfig, shard: str = "s") -> None:
        if not isinstance(cfg, RethinkerConfig):
            raise TypeError(f"cfg must be a RethinkerConfig, got {type(cfg).__name__}")
        ssr = cfg.algorithm.ssr
        if ssr.capacity > P.MAX_CAPACITY or ssr.replay_capacity > P.MAX_CAPACITY:
            raise BadArgumentError(
                f"algorithm.ssr.capacity / replay_capacity must be at most {P.MAX_CAPACITY} per store "
                f"(got {ssr.capacity} / {ssr.replay_capacity}); shard the store beyond that (docs/buffer.md)"
            )
        if ssr.reuse_cap > P.MAX_REUSE_CAP:
            raise BadArgumentError(f"algorithm.ssr.reuse_cap must be at most {P.MAX_REUSE_CAP}, got {ssr.reuse_cap}")
        self.cfg = cfg
        self.keys = RedisKeys(cfg.redis.namespace, shard=shard)
        self.store_keys = P.store_keys(self.keys)
        self._loaded = False
        self._group_ready = False
        self._tasks = P.TaskCache(cfg.buffer.task_cache_size)

    def _task_map(self, gids: list[str], missing: list[str], heads: list[bytes | None]) -> dict[str, PromptTask]:
        if missing:
            for g, head in zip(missing, heads):
                if head is not None:
                    self._tasks.put(g, task_of_group_frame(head))
        out = {}
        for g in gids:
            t = self._tasks.get(g)
            if t is not None:
                out[g] = t
        return out

    def _sample_keys(self, request_id: str) -> list[str]:
        return self.store_keys + [self.keys.sample_request(request_id)]

    def _claim_block_ms(self, block_ms: int) -> int:
        # a blocking read must return before the socket timeout fires
        limit = int(self.cfg.redis.socket_timeout_s * 1000 * 0.8)
        return max(0, min(int(block_ms), limit))

    @property
    def _reclaim_ms(self) -> int:
        return int(self.cfg.buffer.reclaim_idle_s * 1000)


def _is_nogroup(exc: Exception) -> bool:
    return "NOGROUP" in str(exc)


def _raise(value: Any) -> Any:
    if isinstance(value, Exception):
        raise P.translate_error(value)
    return value


def _queue_adds(p: Any, calls: list[P.AddGroupCall]) -> None:
    for c in calls:
        p.msetnx(c.payloads)
        p.fcall("rtk_add_group", len(c.keys), *c.keys, *c.args)


def _add_results(calls: list[P.AddGroupCall], replies: list[Any]) -> list[AddGroupResult]:
    out = []
    for k, c in enumerate(calls):
        rep = replies[2 * k + 1]
        if isinstance(rep, Exception):
            raise P.translate_error(rep, group=True)
        out.append(P.parse_add_group(c.group_id, rep))
    return out


def _snapshot_record(group: Group, pools: dict[str, str]) -> bytes:
    return msgpack.packb({"group": encode(group), "pools": pools}, use_bin_type=True)


# =========================================================================== sync


class BufferClient(_Common):
    """Synchronous client (rollout servers, learner, tests)."""

    def __init__(self, cfg: RethinkerConfig, *, client: redis.Redis | None = None, shard: str = "s") -> None:
        super().__init__(cfg, shard)
        self.r = client if client is not None else sync_client(cfg.redis)

    # ------------------------------------------------------------------ plumbing

    def ensure_library(self, *, force: bool = False) -> str:
        version = ensure_library(self.r, force=force)
        self._loaded = True
        return version

    def _fcall(self, fn: str, keys: Sequence[str], args: Sequence[Any], *, ro: bool = False, group: bool = False) -> Any:
        if not self._loaded:
            self.ensure_library()
        call = self.r.fcall_ro if ro else self.r.fcall
        try:
            return call(fn, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise P.translate_error(exc, group=group) from None
        self.ensure_library(force=True)
        try:
            return call(fn, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            raise P.translate_error(exc, group=group) from None

    def _pipeline(self, fill: Callable[[Any], None], *, transaction: bool = False) -> list[Any]:
        """Run the commands ``fill(pipe)`` queues in one round trip (reloading the library once
        if the server lost it); errors come back in the list, not raised."""
        if not self._loaded:
            self.ensure_library()
        for attempt in range(2):
            with self.r.pipeline(transaction=transaction) as p:
                fill(p)
                replies = p.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(x, redis.ResponseError) and is_missing_function(x) for x in replies):
                self.ensure_library(force=True)
                continue
            return replies
        return replies

    def ping(self) -> bool:
        return bool(self.r.ping())

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> "BufferClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ prompt queue

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.r.xgroup_create(self.keys.task_stream, self.keys.task_group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def publish_tasks(self, tasks: Sequence[PromptTask], *, force: bool = False) -> PublishResult:
        """Publish tasks; duplicates (same epoch and prompt id) and tasks over
        ``buffer.max_inflight_tasks`` (unless ``force``) are not published and are listed."""
        if not tasks:
            return PublishResult(0, [], [])
        keys, args = P.publish_call(self.keys, tasks, self.cfg.buffer.max_inflight_tasks, force)
        self._ensure_group()
        return P.parse_publish(self._fcall("rtk_q_publish", keys, args))

    def claim_tasks(self, consumer: str, count: int, block_ms: int = 1000) -> list[ClaimedTask]:
        """Up to ``count`` tasks for ``consumer``: first tasks idle for ``buffer.reclaim_idle_s`` at
        another (dead) consumer, then new ones (blocking up to ``block_ms`` when there are none)."""
        if not isinstance(consumer, str) or not consumer or count < 1:
            raise BadArgumentError(f"need a consumer name and count >= 1, got {consumer!r}, {count!r}")
        self._ensure_group()
        try:
            return self._claim(consumer, count, block_ms)
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._group_ready = False
            self._ensure_group()
            return self._claim(consumer, count, block_ms)

    def _claim(self, consumer: str, count: int, block_ms: int) -> list[ClaimedTask]:
        k = self.keys
        idle = self.r.xpending_range(k.task_stream, k.task_group, min="-", max="+", count=4 * count, idle=self._reclaim_ms)
        stale = P.reclaimable(idle, consumer, count)
        claimed_entries = []
        if stale:
            claimed_entries = self.r.xclaim(k.task_stream, k.task_group, consumer, self._reclaim_ms, list(stale))
        tasks, garbage = P.parse_entries(claimed_entries, stale)
        want = count - len(tasks)
        if want > 0:
            block = None if tasks else self._claim_block_ms(block_ms)
            if block == 0:
                block = None
            res = self.r.xreadgroup(k.task_group, consumer, {k.task_stream: ">"}, count=want, block=block)
            for _stream, entries in res or []:
                more, bad = P.parse_entries(entries)
                tasks += more
                garbage += bad
        for eid in garbage:
            self.ack_task(eid)
        return tasks

    def reclaim_own(self, consumer: str, count: int) -> list[ClaimedTask]:
        """Up to ``count`` tasks still pending under ``consumer``'s own name, claimed again at once
        (no idle wait): a server restarted under its id takes back what its previous incarnation
        held.  Call it only while this process holds no claim of its own (at start)."""
        if not isinstance(consumer, str) or not consumer or count < 1:
            raise BadArgumentError(f"need a consumer name and count >= 1, got {consumer!r}, {count!r}")
        self._ensure_group()
        k = self.keys
        try:
            rows = self.r.xpending_range(k.task_stream, k.task_group, min="-", max="+", count=count, consumername=consumer)
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._group_ready = False
            return []
        own = P.own_pending(rows)
        if not own:
            return []
        tasks, garbage = P.parse_entries(self.r.xclaim(k.task_stream, k.task_group, consumer, 0, list(own)), own)
        for eid in garbage:
            self.ack_task(eid)
        return tasks

    def extend_claims(self, consumer: str, entry_ids: Sequence[str]) -> int:
        """Reset the idle time of tasks ``consumer`` still works on, so that they are not reclaimed
        (call it more often than ``buffer.reclaim_idle_s`` during long generations)."""
        if not entry_ids:
            return 0
        k = self.keys
        return len(self.r.xclaim(k.task_stream, k.task_group, consumer, 0, list(entry_ids), justid=True))

    def ack_task(self, entry_id: str) -> bool:
        """The task's group is stored: drop it from the queue.  False if it was not pending."""
        return int(self._fcall("rtk_q_ack", [self.keys.task_stream], [self.keys.task_group, entry_id])) == 1

    def release_task(self, entry_id: str) -> bool:
        """Give an unfinished task back: it is queued again at once for any consumer."""
        return int(self._fcall("rtk_q_release", [self.keys.task_stream], [self.keys.task_group, entry_id])) == 1

    def queue_stats(self) -> QueueStats:
        inflight, pending = self._fcall("rtk_q_stats", [self.keys.task_stream], [self.keys.task_group], ro=True)
        return QueueStats(int(inflight), int(pending), self.cfg.buffer.max_inflight_tasks)

    def queue_depth(self) -> int:
        """Tasks published and not yet delivered to any rollout server."""
        return self.queue_stats().depth

    def pending_tasks(self) -> int:
        """Tasks delivered to a rollout server and not yet acked."""
        return self.queue_stats().pending

    def inflight_tasks(self) -> int:
        """Tasks published and not yet acked (queued + pending)."""
        return self.queue_stats().inflight

    def can_publish(self) -> int:
        """How many more tasks may be published under ``buffer.max_inflight_tasks``."""
        return self.queue_stats().can_publish

    # ------------------------------------------------------------------ store

    def add_group(self, group: Group) -> AddGroupResult:
        """Store a scored group atomically (advantages, pools, counters); idempotent by group id.
        Raises MalformedGroupError (nothing written) for a group that cannot be stored."""
        return self.add_groups([group])[0]

    def add_groups(self, groups: Sequence[Group]) -> list[AddGroupResult]:
        """Several ``add_group`` in one round trip (one MULTI/EXEC; each group is checked, stored
        or refused on its own).  All groups are validated before anything is sent."""
        calls = [P.add_group_call(g, self.cfg, self.keys, self.store_keys) for g in groups]
        if not calls:
            return []
        replies = self._pipeline(lambda p: _queue_adds(p, calls), transaction=True)
        return _add_results(calls, replies)

    def sample(
        self,
        n: int,
        *,
        mode: str | None = None,
        policy_version: int,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> SampledBatch:
        """Draw a training batch of ``n`` responses (see docs/buffer.md for the rules of each mode).

        Returns at once; an empty batch when nothing is drawable.  Repeating a call with the same
        ``request_id`` (within ``buffer.request_ttl_s``) returns the same batch and changes nothing.
        """
        mode = _mode(self.cfg, mode)
        rid = request_id or uuid.uuid4().hex
        args = P.sample_args(n, mode, policy_version, _new_seed() if seed is None else int(seed), self.cfg)
        unpacked = P.unpack_batch(self._fcall("rtk_sample", self._sample_keys(rid), args))
        sids, gids = P.batch_ids(unpacked[2])
        missing = [g for g in gids if self._tasks.get(g) is None]
        skeys = [self.keys.sample_data(x) for x in sids]
        gkeys = [self.keys.group_data(g) for g in missing]
        datas, heads = self._pipeline(lambda p: (p.mget(skeys or ["-"]), p.mget(gkeys or ["-"])))
        return P.parse_batch(unpacked, _raise(datas) if skeys else [], self._task_map(gids, missing, _raise(heads)),
                             mode=mode, policy_version=policy_version, request_id=rid)

    def sizes(self) -> StoreSizes:
        return P.parse_sizes(self._fcall("rtk_sizes", self.store_keys, [], ro=True))

    def wait_for_samples(self, min_fresh: int, timeout_s: float, *, mode: str | None = None, poll_s: float = 0.05) -> int:
        """Wait until at least ``min_fresh`` never-trained responses are drawable (effective ones;
        for mode ``grpo`` zero-advantage ones count too) or ``timeout_s`` passes; returns the count."""
        deadline = time.monotonic() + timeout_s
        grpo = _mode(self.cfg, mode) == "grpo"
        while True:
            s = self.sizes()
            have = s.fresh + (s.zero if grpo else 0)
            if have >= min_fresh or time.monotonic() >= deadline:
                return have
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def get_sample_record(self, sample_id: str) -> SampleRecord | None:
        if not isinstance(sample_id, str) or not sample_id:
            return None
        meta, data = self._pipeline(lambda p: (
            p.fcall_ro("rtk_get", len(self.store_keys), *self.store_keys, "sample", sample_id),
            p.get(self.keys.sample_data(sample_id))))
        return P.parse_sample_record(_raise(meta), _raise(data))

    def get_sample(self, sample_id: str) -> Sample | None:
        rec = self.get_sample_record(sample_id)
        return rec.sample if rec else None

    def get_group_record(self, group_id: str) -> tuple[Group, dict[str, str]] | None:
        if not isinstance(group_id, str) or not group_id:
            return None
        meta, head = self._pipeline(lambda p: (
            p.fcall_ro("rtk_get", len(self.store_keys), *self.store_keys, "group", group_id),
            p.get(self.keys.group_data(group_id))))
        meta, head = _raise(meta), _raise(head)
        if not meta or head is None:
            return None
        skeys = [self.keys.sample_data(x) for x in P.group_sample_ids(meta)]
        return P.parse_group(meta, head, self.r.mget(skeys) if skeys else [])

    def get_group(self, group_id: str) -> Group | None:
        rec = self.get_group_record(group_id)
        return rec[0] if rec else None

    def store_stats_raw(self, learner_version: int = -1) -> list[Any]:
        return self._fcall("rtk_stats", self.store_keys, [learner_version, STATS_MAX_LAG], ro=True)

    def stats(self) -> dict[str, Any]:
        """Everything the stats endpoint and the dashboard show (see services/buffer/stats.py)."""
        pv = self.policy_version()
        raw = self.store_stats_raw(pv.version if pv else -1)
        return build_stats(raw, self.queue_stats(), pv, self.live_servers(), self.cfg)

    def clear(self, *, store: bool = True, queue: bool = True, registry: bool = False) -> int:
        """Delete the namespace's store and queue (and, on request, the registry and policy
        version); returns the number of keys deleted."""
        patterns = []
        if store:
            patterns.append(self.keys.store_pattern())
        if queue:
            patterns.append(self.keys.queue_pattern())
        if registry:
            patterns += [self.keys.servers, self.keys.server_alive, self.keys.policy_version]
        n = 0
        for pat in patterns:
            batch = []
            for key in self.r.scan_iter(match=pat, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    n += self.r.unlink(*batch)
                    batch = []
            if batch:
                n += self.r.unlink(*batch)
        self._group_ready = False
        self._tasks.clear()
        return n

    def _group_ids(self, chunk: int = 500):
        """Stored group ids, oldest first (capacity eviction may remove some while iterating)."""
        start = 0
        while True:
            ids = self.r.lrange(self.keys.group_order, start, start + chunk - 1)
            yield from (P._s(g) for g in ids)
            if len(ids) < chunk:
                return
            start += chunk

    def snapshot(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write every stored group (with its samples and their pool state) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        n_groups = n_samples = 0
        with open(tmp, "wb") as f:
            f.write(SNAPSHOT_MAGIC)
            for gid in self._group_ids():
                rec = self.get_group_record(gid)
                if rec is None:
                    continue
                blob = _snapshot_record(*rec)
                f.write(struct.pack("<Q", len(blob)))
                f.write(blob)
                n_groups += 1
                n_samples += len(rec[0].samples)
        os.replace(tmp, path)
        return {"path": str(path), "groups": n_groups, "samples": n_samples, "bytes": path.stat().st_size}

    # ------------------------------------------------------------------ versions and registry

    def publish_policy_version(self, pv: PolicyVersion) -> None:
        mapping = P.policy_version_mapping(pv)
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.keys.policy_version, mapping=mapping)
            p.zadd(self.keys.policy_version_high, {"high": int(pv.version)}, gt=True)
            p.publish(self.keys.policy_channel, P.policy_event(pv))
            p.execute()

    def policy_version(self) -> PolicyVersion | None:
        return P.parse_policy_version(self.r.hgetall(self.keys.policy_version))

    def reserve_policy_version(self, version: int) -> None:
        """Record ``version`` as used before any weights go out under it (the high-water mark only
        grows), so that a learner killed mid-sync never reuses the number."""
        self.r.zadd(self.keys.policy_version_high, {"high": int(version)}, gt=True)

    def highest_policy_version(self) -> int | None:
        """The highest version ever published in this namespace (None: none yet)."""
        high = self.r.zscore(self.keys.policy_version_high, "high")
        pv = self.policy_version()
        found = [int(v) for v in (high, pv.version if pv is not None else None) if v is not None]
        return max(found) if found else None

    def register_server(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None:
        self.heartbeat(server_id, info, ttl_s)

    def heartbeat(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None:
        js = P.server_info_json(server_id, info)
        self._fcall("rtk_w_heartbeat", [self.keys.servers, self.keys.server_alive], [server_id, js, repr(float(ttl_s))])

    def unregister_server(self, server_id: str) -> None:
        self._fcall("rtk_w_unregister", [self.keys.servers, self.keys.server_alive], [server_id])

    def live_servers(self) -> dict[str, dict[str, Any]]:
        return P.parse_live(self._fcall("rtk_w_live", [self.keys.servers, self.keys.server_alive], []))


# =========================================================================== asyncio


class AsyncBufferClient(_Common):
    """asyncio client with the same methods as ``BufferClient`` (the HTTP app, async services)."""

    def __init__(self, cfg: RethinkerConfig, *, client: aioredis.Redis | None = None, shard: str = "s") -> None:
        super().__init__(cfg, shard)
        self.r = client if client is not None else async_client(cfg.redis)

    async def ensure_library(self, *, force: bool = False) -> str:
        version = await ensure_library_async(self.r, force=force)
        self._loaded = True
        return version

    async def _fcall(self, fn: str, keys: Sequence[str], args: Sequence[Any], *, ro: bool = False, group: bool = False) -> Any:
        if not self._loaded:
            await self.ensure_library()
        call = self.r.fcall_ro if ro else self.r.fcall
        try:
            return await call(fn, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise P.translate_error(exc, group=group) from None
        await self.ensure_library(force=True)
        try:
            return await call(fn, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            raise P.translate_error(exc, group=group) from None

    async def _pipeline(self, fill: Callable[[Any], None], *, transaction: bool = False) -> list[Any]:
        if not self._loaded:
            await self.ensure_library()
        for attempt in range(2):
            async with self.r.pipeline(transaction=transaction) as p:
                fill(p)
                replies = await p.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(x, redis.ResponseError) and is_missing_function(x) for x in replies):
                await self.ensure_library(force=True)
                continue
            return replies
        return replies

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()

    async def __aenter__(self) -> "AsyncBufferClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ prompt queue

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.r.xgroup_create(self.keys.task_stream, self.keys.task_group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def publish_tasks(self, tasks: Sequence[PromptTask], *, force: bool = False) -> PublishResult:
        if not tasks:
            return PublishResult(0, [], [])
        keys, args = P.publish_call(self.keys, tasks, self.cfg.buffer.max_inflight_tasks, force)
        await self._ensure_group()
        return P.parse_publish(await self._fcall("rtk_q_publish", keys, args))

    async def claim_tasks(self, consumer: str, count: int, block_ms: int = 1000) -> list[ClaimedTask]:
        if not isinstance(consumer, str) or not consumer or count < 1:
            raise BadArgumentError(f"need a consumer name and count >= 1, got {consumer!r}, {count!r}")
        await self._ensure_group()
        try:
            return await self._claim(consumer, count, block_ms)
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._group_ready = False
            await self._ensure_group()
            return await self._claim(consumer, count, block_ms)

    async def _claim(self, consumer: str, count: int, block_ms: int) -> list[ClaimedTask]:
        k = self.keys
        idle = await self.r.xpending_range(k.task_stream, k.task_group, min="-", max="+", count=4 * count, idle=self._reclaim_ms)
        stale = P.reclaimable(idle, consumer, count)
        claimed_entries = []
        if stale:
            claimed_entries = await self.r.xclaim(k.task_stream, k.task_group, consumer, self._reclaim_ms, list(stale))
        tasks, garbage = P.parse_entries(claimed_entries, stale)
        want = count - len(tasks)
        if want > 0:
            block = None if tasks else self._claim_block_ms(block_ms)
            if block == 0:
                block = None
            res = await self.r.xreadgroup(k.task_group, consumer, {k.task_stream: ">"}, count=want, block=block)
            for _stream, entries in res or []:
                more, bad = P.parse_entries(entries)
                tasks += more
                garbage += bad
        for eid in garbage:
            await self.ack_task(eid)
        return tasks

    async def reclaim_own(self, consumer: str, count: int) -> list[ClaimedTask]:
        if not isinstance(consumer, str) or not consumer or count < 1:
            raise BadArgumentError(f"need a consumer name and count >= 1, got {consumer!r}, {count!r}")
        await self._ensure_group()
        k = self.keys
        try:
            rows = await self.r.xpending_range(k.task_stream, k.task_group, min="-", max="+", count=count, consumername=consumer)
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._group_ready = False
            return []
        own = P.own_pending(rows)
        if not own:
            return []
        tasks, garbage = P.parse_entries(await self.r.xclaim(k.task_stream, k.task_group, consumer, 0, list(own)), own)
        for eid in garbage:
            await self.ack_task(eid)
        return tasks

    async def extend_claims(self, consumer: str, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        k = self.keys
        return len(await self.r.xclaim(k.task_stream, k.task_group, consumer, 0, list(entry_ids), justid=True))

    async def ack_task(self, entry_id: str) -> bool:
        return int(await self._fcall("rtk_q_ack", [self.keys.task_stream], [self.keys.task_group, entry_id])) == 1

    async def release_task(self, entry_id: str) -> bool:
        return int(await self._fcall("rtk_q_release", [self.keys.task_stream], [self.keys.task_group, entry_id])) == 1

    async def queue_stats(self) -> QueueStats:
        inflight, pending = await self._fcall("rtk_q_stats", [self.keys.task_stream], [self.keys.task_group], ro=True)
        return QueueStats(int(inflight), int(pending), self.cfg.buffer.max_inflight_tasks)

    async def queue_depth(self) -> int:
        return (await self.queue_stats()).depth

    async def pending_tasks(self) -> int:
        return (await self.queue_stats()).pending

    async def inflight_tasks(self) -> int:
        return (await self.queue_stats()).inflight

    async def can_publish(self) -> int:
        return (await self.queue_stats()).can_publish

    # ------------------------------------------------------------------ store

    async def add_group(self, group: Group) -> AddGroupResult:
        return (await self.add_groups([group]))[0]

    async def add_groups(self, groups: Sequence[Group]) -> list[AddGroupResult]:
        calls = [P.add_group_call(g, self.cfg, self.keys, self.store_keys) for g in groups]
        if not calls:
            return []
        replies = await self._pipeline(lambda p: _queue_adds(p, calls), transaction=True)
        return _add_results(calls, replies)

    async def sample(
        self,
        n: int,
        *,
        mode: str | None = None,
        policy_version: int,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> SampledBatch:
        mode = _mode(self.cfg, mode)
        rid = request_id or uuid.uuid4().hex
        args = P.sample_args(n, mode, policy_version, _new_seed() if seed is None else int(seed), self.cfg)
        unpacked = P.unpack_batch(await self._fcall("rtk_sample", self._sample_keys(rid), args))
        sids, gids = P.batch_ids(unpacked[2])
        missing = [g for g in gids if self._tasks.get(g) is None]
        skeys = [self.keys.sample_data(x) for x in sids]
        gkeys = [self.keys.group_data(g) for g in missing]
        datas, heads = await self._pipeline(lambda p: (p.mget(skeys or ["-"]), p.mget(gkeys or ["-"])))
        return P.parse_batch(unpacked, _raise(datas) if skeys else [], self._task_map(gids, missing, _raise(heads)),
                             mode=mode, policy_version=policy_version, request_id=rid)

    async def sizes(self) -> StoreSizes:
        return P.parse_sizes(await self._fcall("rtk_sizes", self.store_keys, [], ro=True))

    async def wait_for_samples(self, min_fresh: int, timeout_s: float, *, mode: str | None = None, poll_s: float = 0.05) -> int:
        deadline = time.monotonic() + timeout_s
        grpo = _mode(self.cfg, mode) == "grpo"
        while True:
            s = await self.sizes()
            have = s.fresh + (s.zero if grpo else 0)
            if have >= min_fresh or time.monotonic() >= deadline:
                return have
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    async def get_sample_record(self, sample_id: str) -> SampleRecord | None:
        if not isinstance(sample_id, str) or not sample_id:
            return None
        meta, data = await self._pipeline(lambda p: (
            p.fcall_ro("rtk_get", len(self.store_keys), *self.store_keys, "sample", sample_id),
            p.get(self.keys.sample_data(sample_id))))
        return P.parse_sample_record(_raise(meta), _raise(data))

    async def get_sample(self, sample_id: str) -> Sample | None:
        rec = await self.get_sample_record(sample_id)
        return rec.sample if rec else None

    async def get_group_record(self, group_id: str) -> tuple[Group, dict[str, str]] | None:
        if not isinstance(group_id, str) or not group_id:
            return None
        meta, head = await self._pipeline(lambda p: (
            p.fcall_ro("rtk_get", len(self.store_keys), *self.store_keys, "group", group_id),
            p.get(self.keys.group_data(group_id))))
        meta, head = _raise(meta), _raise(head)
        if not meta or head is None:
            return None
        skeys = [self.keys.sample_data(x) for x in P.group_sample_ids(meta)]
        return P.parse_group(meta, head, await self.r.mget(skeys) if skeys else [])

    async def get_group(self, group_id: str) -> Group | None:
        rec = await self.get_group_record(group_id)
        return rec[0] if rec else None

    async def store_stats_raw(self, learner_version: int = -1) -> list[Any]:
        return await self._fcall("rtk_stats", self.store_keys, [learner_version, STATS_MAX_LAG], ro=True)

    async def stats(self) -> dict[str, Any]:
        pv = await self.policy_version()
        raw = await self.store_stats_raw(pv.version if pv else -1)
        return build_stats(raw, await self.queue_stats(), pv, await self.live_servers(), self.cfg)

    async def clear(self, *, store: bool = True, queue: bool = True, registry: bool = False) -> int:
        patterns = []
        if store:
            patterns.append(self.keys.store_pattern())
        if queue:
            patterns.append(self.keys.queue_pattern())
        if registry:
            patterns += [self.keys.servers, self.keys.server_alive, self.keys.policy_version]
        n = 0
        for pat in patterns:
            batch = []
            async for key in self.r.scan_iter(match=pat, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    n += await self.r.unlink(*batch)
                    batch = []
            if batch:
                n += await self.r.unlink(*batch)
        self._group_ready = False
        self._tasks.clear()
        return n

    async def _group_ids(self, chunk: int = 500):
        start = 0
        while True:
            ids = await self.r.lrange(self.keys.group_order, start, start + chunk - 1)
            for g in ids:
                yield P._s(g)
            if len(ids) < chunk:
                return
            start += chunk

    async def snapshot(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        n_groups = n_samples = 0
        with open(tmp, "wb") as f:
            f.write(SNAPSHOT_MAGIC)
            async for gid in self._group_ids():
                rec = await self.get_group_record(gid)
                if rec is None:
                    continue
                blob = _snapshot_record(*rec)
                f.write(struct.pack("<Q", len(blob)))
                f.write(blob)
                n_groups += 1
                n_samples += len(rec[0].samples)
        os.replace(tmp, path)
        return {"path": str(path), "groups": n_groups, "samples": n_samples, "bytes": path.stat().st_size}

    # ------------------------------------------------------------------ versions and registry

    async def publish_policy_version(self, pv: PolicyVersion) -> None:
        mapping = P.policy_version_mapping(pv)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.keys.policy_version, mapping=mapping)
            p.zadd(self.keys.policy_version_high, {"high": int(pv.version)}, gt=True)
            p.publish(self.keys.policy_channel, P.policy_event(pv))
            await p.execute()

    async def policy_version(self) -> PolicyVersion | None:
        return P.parse_policy_version(await self.r.hgetall(self.keys.policy_version))

    async def reserve_policy_version(self, version: int) -> None:
        await self.r.zadd(self.keys.policy_version_high, {"high": int(version)}, gt=True)

    async def highest_policy_version(self) -> int | None:
        high = await self.r.zscore(self.keys.policy_version_high, "high")
        pv = await self.policy_version()
        found = [int(v) for v in (high, pv.version if pv is not None else None) if v is not None]
        return max(found) if found else None

    async def register_server(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None:
        await self.heartbeat(server_id, info, ttl_s)

    async def heartbeat(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None:
        js = P.server_info_json(server_id, info)
        await self._fcall("rtk_w_heartbeat", [self.keys.servers, self.keys.server_alive], [server_id, js, repr(float(ttl_s))])

    async def unregister_server(self, server_id: str) -> None:
        await self._fcall("rtk_w_unregister", [self.keys.servers, self.keys.server_alive], [server_id])

    async def live_servers(self) -> dict[str, dict[str, Any]]:
        return P.parse_live(await self._fcall("rtk_w_live", [self.keys.servers, self.keys.server_alive], []))


def read_snapshot(path: str | os.PathLike[str]) -> list[tuple[Group, dict[str, str]]]:
    """Read a file written by ``snapshot``: [(group with samples, sample_id -> pool)]."""
    from common.codec import decode

    out = []
    with open(path, "rb") as f:
        if f.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
            raise ValueError(f"{path} is not a buffer snapshot")
        while True:
            head = f.read(8)
            if not head:
                break
            (size,) = struct.unpack("<Q", head)
            rec = msgpack.unpackb(f.read(size), raw=False)
            out.append((decode(rec["group"], Group), rec["pools"]))
    return out
