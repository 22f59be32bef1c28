"""Clients of the SSR buffer: ``BufferClient`` (sync) and ``AsyncBufferClient`` (asyncio).

Rollout servers and the learner import this package; nothing else of ``services.buffer`` is public.
Both clients have the same methods (the async ones are coroutines), each written once as a command
in the module of its key group and run by a sync or an asyncio executor (``transport``):

``queue``     prompt queue ({q})  publish_tasks, claim_tasks, reclaim_own, extend_claims, ack_task,
                                  release_task, queue_depth, pending_tasks, inflight_tasks,
                                  can_publish, queue_stats
``store``     store ({s})         add_group, add_groups, sample, wait_for_samples, sizes, get_group,
                                  get_group_record, get_sample, get_sample_record
``versions``  policy version ({w}) publish_policy_version, policy_version, reserve_policy_version,
                                  highest_policy_version
``registry``  rollout servers ({w}) register_server, heartbeat, unregister_server, live_servers
``admin``     all groups          stats, clear, snapshot (and ``read_snapshot``)

``transport`` holds the effects a command yields and the two executors; ``state`` what every client
holds; ``clients`` the two classes.  Request building and reply parsing are in
``services.buffer.protocol``.

All state lives in Redis; every state change is one Redis Function call, atomic (``add_group``
sends its payloads with MSETNX in the same MULTI/EXEC).  Connections retry with exponential backoff
on connection errors (``common.redis_conn``) and every call is safe to repeat: ``add_group`` by
group id, ``sample`` by a request id cached server-side for ``buffer.request_ttl_s``,
``ack_task``/``release_task`` by entry id, publication by (epoch, prompt id).  A server that lost
the function library is detected and the library reloaded.  See docs/buffer.md.
"""

from __future__ import annotations

from services.buffer.client.admin import SNAPSHOT_MAGIC, read_snapshot
from services.buffer.client.clients import AsyncBufferClient, BufferClient
from common.schemas.buffer import (
    AddGroupResult,
    ClaimedTask,
    PublishResult,
    QueueStats,
    SampledBatch,
    SampleRecord,
    StoreSizes,
)
from services.buffer.protocol import BadArgumentError, BufferCommandError, MalformedGroupError

__all__ = [
    "AddGroupResult",
    "AsyncBufferClient",
    "BadArgumentError",
    "BufferClient",
    "BufferCommandError",
    "ClaimedTask",
    "MalformedGroupError",
    "PublishResult",
    "QueueStats",
    "SNAPSHOT_MAGIC",
    "SampleRecord",
    "SampledBatch",
    "StoreSizes",
    "read_snapshot",
]
