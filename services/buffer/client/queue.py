"""Prompt-queue commands (``{q}`` keys): publish, claim, reclaim, extend, ack, release, counts.

The queue is a Redis stream with one consumer group (``RedisKeys.task_group``) of rollout servers.
Writers: the learner's feeder publishes; rollout servers claim, extend, ack and release.  Readers:
the feeder (``can_publish`` / ``queue_stats``), the stats endpoint.  Each command is written once and
runs on both clients (``transport``).
"""

from __future__ import annotations

from typing import Sequence

import redis

from common.schemas import PromptTask
from services.buffer import protocol as P
from services.buffer.client.state import ClientState
from services.buffer.client.transport import Command, Fcall, call
from common.schemas.buffer import ClaimedTask, PublishResult, QueueStats
from services.buffer.protocol import BadArgumentError


def _is_nogroup(exc: Exception) -> bool:
    return "NOGROUP" in str(exc)


def _check_consumer(consumer: str, count: int) -> None:
    if not isinstance(consumer, str) or not consumer or count < 1:
        raise BadArgumentError(f"need a consumer name and count >= 1, got {consumer!r}, {count!r}")


def _claim_block_ms(c: ClientState, block_ms: int) -> int:
    # a blocking read must return before the socket timeout fires
    limit = int(c.cfg.redis.socket_timeout_s * 1000 * 0.8)
    return max(0, min(int(block_ms), limit))


def _reclaim_ms(c: ClientState) -> int:
    return int(c.cfg.buffer.reclaim_idle_s * 1000)


def ensure_group(c: ClientState) -> Command[None]:
    """Create the task stream and its consumer group unless this client knows they exist."""
    if c._group_ready:
        return
    try:
        yield call("xgroup_create", c.keys.task_stream, c.keys.task_group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    c._group_ready = True


def publish_tasks(c: ClientState, tasks: Sequence[PromptTask], *, force: bool = False) -> Command[PublishResult]:
    """Publish tasks; duplicates (same epoch and prompt id) and tasks over
    ``buffer.max_inflight_tasks`` (unless ``force``) are not published and are listed."""
    if not tasks:
        return PublishResult(0, [], [])
    keys, args = P.publish_call(c.keys, tasks, c.cfg.buffer.max_inflight_tasks, force)
    yield from ensure_group(c)
    return P.parse_publish((yield Fcall("rtk_q_publish", keys, args)))


def claim_tasks(c: ClientState, consumer: str, count: int, block_ms: int = 1000) -> Command[list[ClaimedTask]]:
    """Up to ``count`` tasks for ``consumer``: first tasks idle for ``buffer.reclaim_idle_s`` at
    another (dead) consumer, then new ones (blocking up to ``block_ms`` when there are none)."""
    _check_consumer(consumer, count)
    yield from ensure_group(c)
    try:
        return (yield from _claim(c, consumer, count, block_ms))
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        c._group_ready = False
        yield from ensure_group(c)
        return (yield from _claim(c, consumer, count, block_ms))


def _claim(c: ClientState, consumer: str, count: int, block_ms: int) -> Command[list[ClaimedTask]]:
    k = c.keys
    idle = yield call("xpending_range", k.task_stream, k.task_group, min="-", max="+", count=4 * count, idle=_reclaim_ms(c))
    stale = P.reclaimable(idle, consumer, count)
    claimed_entries = []
    if stale:
        claimed_entries = yield call("xclaim", k.task_stream, k.task_group, consumer, _reclaim_ms(c), list(stale))
    tasks, garbage = P.parse_entries(claimed_entries, stale)
    want = count - len(tasks)
    if want > 0:
        block = None if tasks else _claim_block_ms(c, block_ms)
        if block == 0:
            block = None
        res = yield call("xreadgroup", k.task_group, consumer, {k.task_stream: ">"}, count=want, block=block)
        for _stream, entries in res or []:
            more, bad = P.parse_entries(entries)
            tasks += more
            garbage += bad
    for eid in garbage:
        yield from ack_task(c, eid)
    return tasks


def reclaim_own(c: ClientState, consumer: str, count: int) -> Command[list[ClaimedTask]]:
    """Up to ``count`` tasks still pending under ``consumer``'s own name, claimed again at once
    (no idle wait): a server restarted under its id takes back what its previous incarnation
    held.  Call it only while this process holds no claim of its own (at start)."""
    _check_consumer(consumer, count)
    yield from ensure_group(c)
    k = c.keys
    try:
        rows = yield call("xpending_range", k.task_stream, k.task_group, min="-", max="+", count=count, consumername=consumer)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        c._group_ready = False
        return []
    own = P.own_pending(rows)
    if not own:
        return []
    entries = yield call("xclaim", k.task_stream, k.task_group, consumer, 0, list(own))
    tasks, garbage = P.parse_entries(entries, own)
    for eid in garbage:
        yield from ack_task(c, eid)
    return tasks


def extend_claims(c: ClientState, consumer: str, entry_ids: Sequence[str]) -> Command[int]:
    """Reset the idle time of tasks ``consumer`` still works on, so that they are not reclaimed
    (call it more often than ``buffer.reclaim_idle_s`` during long generations)."""
    if not entry_ids:
        return 0
    k = c.keys
    return len((yield call("xclaim", k.task_stream, k.task_group, consumer, 0, list(entry_ids), justid=True)))


def ack_task(c: ClientState, entry_id: str) -> Command[bool]:
    """The task's group is stored: drop it from the queue.  False if it was not pending."""
    return int((yield Fcall("rtk_q_ack", [c.keys.task_stream], [c.keys.task_group, entry_id]))) == 1


def release_task(c: ClientState, entry_id: str) -> Command[bool]:
    """Give an unfinished task back: it is queued again at once for any consumer."""
    return int((yield Fcall("rtk_q_release", [c.keys.task_stream], [c.keys.task_group, entry_id]))) == 1


def queue_stats(c: ClientState) -> Command[QueueStats]:
    """In-flight and pending counts with the in-flight bound, in one round trip."""
    inflight, pending = yield Fcall("rtk_q_stats", [c.keys.task_stream], [c.keys.task_group], ro=True)
    return QueueStats(int(inflight), int(pending), c.cfg.buffer.max_inflight_tasks)


def queue_depth(c: ClientState) -> Command[int]:
    """Tasks published and not yet delivered to any rollout server."""
    return (yield from queue_stats(c)).depth


def pending_tasks(c: ClientState) -> Command[int]:
    """Tasks delivered to a rollout server and not yet acked."""
    return (yield from queue_stats(c)).pending


def inflight_tasks(c: ClientState) -> Command[int]:
    """Tasks published and not yet acked (queued + pending)."""
    return (yield from queue_stats(c)).inflight


def can_publish(c: ClientState) -> Command[int]:
    """How many more tasks may be published under ``buffer.max_inflight_tasks``."""
    return (yield from queue_stats(c)).can_publish
