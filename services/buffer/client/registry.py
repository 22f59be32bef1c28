"""Rollout-server registry commands (``RedisKeys.rollout_servers`` and ``rollout_server_alive``, ``{w}``).

The registry answers "which rollout *services* are up, where, and how are they doing": one entry
per rollout server process (``info``: address, engine, loaded version, readiness, in-flight tasks,
tokens/s), kept alive by ``heartbeat`` with a TTL measured on the Redis server clock.  Written by
rollout servers (``services.rollout.server``: register at start, heartbeat every
``rollout.heartbeat_s``, unregister at shutdown); read by the buffer's stats endpoint and
dashboard (``live_servers``) and by tests.

It is not the weight-sync membership (``RedisKeys.sync_members``, owned by
``weight_transport``): that one lists weight *receivers* (one per receiving process, e.g.
``<server_id>/w<rank>`` for each vLLM worker), each with a token proof, backend, GPU uuid and its own
heartbeat, and the learner's sender invites only those records to a round.  The two differ in
granularity, liveness rule and trust, so neither can be derived from the other.

Each command is written once and runs on both clients (``transport``).
"""

from __future__ import annotations

from typing import Any

from common.redis_keys import RedisKeys
from services.buffer import protocol as P
from services.buffer.client.state import ClientState
from services.buffer.client.transport import Command, Fcall


def registry_keys(keys: RedisKeys) -> list[str]:
    """The registry's keys, in the order the ``rtk_w_*`` functions take them."""
    return [keys.rollout_servers, keys.rollout_server_alive]


def register_server(c: ClientState, server_id: str, info: dict[str, Any], ttl_s: float) -> Command[None]:
    """Add (or refresh) ``server_id`` with its ``info`` (JSON), live for ``ttl_s`` seconds."""
    yield from heartbeat(c, server_id, info, ttl_s)


def heartbeat(c: ClientState, server_id: str, info: dict[str, Any], ttl_s: float) -> Command[None]:
    """Refresh ``server_id``'s entry and its expiry (Redis server time + ``ttl_s``)."""
    js = P.server_info_json(server_id, info)
    yield Fcall("rtk_w_heartbeat", registry_keys(c.keys), [server_id, js, repr(float(ttl_s))])


def unregister_server(c: ClientState, server_id: str) -> Command[None]:
    """Drop ``server_id`` from the registry."""
    yield Fcall("rtk_w_unregister", registry_keys(c.keys), [server_id])


def live_servers(c: ClientState) -> Command[dict[str, dict[str, Any]]]:
    """server_id -> info of every server whose heartbeat has not expired (expired ones are pruned)."""
    return P.parse_live((yield Fcall("rtk_w_live", registry_keys(c.keys), [])))
