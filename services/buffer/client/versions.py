"""Policy-version commands (``{w}`` keys): the one record of the learner's published version.

Facts owned here, and who writes / reads them:

- ``RedisKeys.policy_version`` (hash): the latest published ``PolicyVersion`` (version, step,
  bytes, time; the checkpoint pointer is ``sync_round.checkpoint``, written by the weight sender).  Written by the learner (``learner.sync.WeightSync`` after each
  weight-sync round, through ``publish_policy_version``, which also announces it on
  ``policy_channel``).  Read by rollout servers (staleness gate of ``services.rollout.actor``), the
  buffer's stats, the learner on resume (``highest_policy_version``) and the chaos harness.  This
  is the only Redis record of "which version the learner is at".
- ``RedisKeys.policy_version_high`` (zset, member ``high``): the highest version ever reserved or
  published (``ZADD GT``).  Written by the learner before any weights go out under a version
  (``reserve_policy_version``) and by ``publish_policy_version``; read by ``highest_policy_version``
  so that a restarted learner never reuses a number.  ``clear(registry=True)`` keeps it on purpose.

Each command is written once and runs on both clients (``transport``).
"""

from __future__ import annotations

from common.redis_keys import RedisKeys
from common.schemas import PolicyVersion
from services.buffer import protocol as P
from services.buffer.client.state import ClientState
from services.buffer.client.transport import Command, Pipeline, call


def cleared_keys(keys: RedisKeys) -> list[str]:
    """The version keys ``clear(registry=True)`` deletes (not the high-water mark)."""
    return [keys.policy_version]


def publish_policy_version(c: ClientState, pv: PolicyVersion) -> Command[None]:
    """Store ``pv`` as the published version, raise the high-water mark and announce it on the
    policy channel (``{"type": "version", ..., "source": "buffer"}``), in one transaction."""
    mapping = P.policy_version_mapping(pv)

    def fill(p):
        p.hset(c.keys.policy_version, mapping=mapping)
        p.zadd(c.keys.policy_version_high, {"high": int(pv.version)}, gt=True)
        p.publish(c.keys.policy_channel, P.policy_event(pv))

    yield Pipeline(fill, transaction=True, functions=False)


def policy_version(c: ClientState) -> Command[PolicyVersion | None]:
    """The latest published version, or None before the first publication."""
    return P.parse_policy_version((yield call("hgetall", c.keys.policy_version)))


def reserve_policy_version(c: ClientState, version: int) -> Command[None]:
    """Record ``version`` as used before any weights go out under it (the high-water mark only
    grows), so that a learner killed mid-sync never reuses the number."""
    yield call("zadd", c.keys.policy_version_high, {"high": int(version)}, gt=True)


def highest_policy_version(c: ClientState) -> Command[int | None]:
    """The highest version ever published in this namespace (None: none yet)."""
    high = yield call("zscore", c.keys.policy_version_high, "high")
    pv = yield from policy_version(c)
    found = [int(v) for v in (high, pv.version if pv is not None else None) if v is not None]
    return max(found) if found else None
