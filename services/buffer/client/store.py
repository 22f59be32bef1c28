"""Trajectory-store commands (``{s}`` keys): add groups, sample batches, sizes, read back.

Writers: rollout servers (``add_group``); the learner (``sample``: draws move responses between
pools).  Readers: the learner (``sizes``, ``stats``), the HTTP app (``stats``, ``get_group``,
``get_sample``, ``snapshot``), tests.  Each command is written once and runs on both clients
(``transport``).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Sequence

from common.config import RethinkerConfig
from common.schemas import Group, PromptTask, Sample
from services.buffer import protocol as P
from services.buffer.client.state import ClientState
from services.buffer.client.transport import Command, Fcall, Pipeline, Sleep, call
from services.buffer.fastcodec import task_of_group_frame
from common.schemas.buffer import AddGroupResult, SampledBatch, SampleRecord, StoreSizes
from services.buffer.stats import STATS_MAX_LAG


def _new_seed() -> int:
    return random.SystemRandom().getrandbits(31)


def resolve_mode(cfg: RethinkerConfig, mode: str | None) -> str:
    return cfg.algorithm.ssr.mode if mode is None else mode


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


def _task_map(c: ClientState, gids: list[str], missing: list[str], heads: list[bytes | None]) -> dict[str, PromptTask]:
    """Tasks of ``gids`` from the client's task cache, after caching the fetched ``heads`` of ``missing``."""
    if missing:
        for g, head in zip(missing, heads):
            if head is not None:
                c._tasks.put(g, task_of_group_frame(head))
    out = {}
    for g in gids:
        t = c._tasks.get(g)
        if t is not None:
            out[g] = t
    return out


def add_group(c: ClientState, group: Group) -> Command[AddGroupResult]:
    """Store a scored group atomically (advantages, pools, counters); idempotent by group id.
    Raises MalformedGroupError (nothing written) for a group that cannot be stored."""
    return (yield from add_groups(c, [group]))[0]


def add_groups(c: ClientState, groups: Sequence[Group]) -> Command[list[AddGroupResult]]:
    """Several ``add_group`` in one round trip (one MULTI/EXEC; each group is checked, stored
    or refused on its own).  All groups are validated before anything is sent."""
    calls = [P.add_group_call(g, c.cfg, c.keys, c.store_keys) for g in groups]
    if not calls:
        return []
    replies = yield Pipeline(lambda p: _queue_adds(p, calls), transaction=True)
    return _add_results(calls, replies)


def sample(
    c: ClientState,
    n: int,
    *,
    mode: str | None = None,
    policy_version: int,
    seed: int | None = None,
    request_id: str | None = None,
) -> Command[SampledBatch]:
    """Draw a training batch of ``n`` responses (see docs/buffer.md for the rules of each mode).

    Returns at once; an empty batch when nothing is drawable.  Repeating a call with the same
    ``request_id`` (within ``buffer.request_ttl_s``) returns the same batch and changes nothing.
    """
    mode = resolve_mode(c.cfg, mode)
    rid = request_id or uuid.uuid4().hex
    args = P.sample_args(n, mode, policy_version, _new_seed() if seed is None else int(seed), c.cfg)
    unpacked = P.unpack_batch((yield Fcall("rtk_sample", c.store_keys + [c.keys.sample_request(rid)], args)))
    sids, gids = P.batch_ids(unpacked[2])
    missing = [g for g in gids if c._tasks.get(g) is None]
    skeys = [c.keys.sample_data(x) for x in sids]
    gkeys = [c.keys.group_data(g) for g in missing]
    datas, heads = yield Pipeline(lambda p: (p.mget(skeys or ["-"]), p.mget(gkeys or ["-"])))
    return P.parse_batch(unpacked, _raise(datas) if skeys else [], _task_map(c, gids, missing, _raise(heads)),
                         mode=mode, policy_version=policy_version, request_id=rid)


def sizes(c: ClientState) -> Command[StoreSizes]:
    """Pool sizes and stored counts."""
    return P.parse_sizes((yield Fcall("rtk_sizes", c.store_keys, [], ro=True)))


def wait_for_samples(c: ClientState, min_fresh: int, timeout_s: float, *, mode: str | None = None, poll_s: float = 0.05) -> Command[int]:
    """Wait until at least ``min_fresh`` never-trained responses are drawable (effective ones;
    for mode ``grpo`` zero-advantage ones count too) or ``timeout_s`` passes; returns the count."""
    deadline = time.monotonic() + timeout_s
    grpo = resolve_mode(c.cfg, mode) == "grpo"
    while True:
        s = yield from sizes(c)
        have = s.fresh + (s.zero if grpo else 0)
        if have >= min_fresh or time.monotonic() >= deadline:
            return have
        yield Sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def get_sample_record(c: ClientState, sample_id: str) -> Command[SampleRecord | None]:
    """A stored sample with its pool and group, or None."""
    if not isinstance(sample_id, str) or not sample_id:
        return None
    meta, data = yield Pipeline(lambda p: (
        p.fcall_ro("rtk_get", len(c.store_keys), *c.store_keys, "sample", sample_id),
        p.get(c.keys.sample_data(sample_id))))
    return P.parse_sample_record(_raise(meta), _raise(data))


def get_sample(c: ClientState, sample_id: str) -> Command[Sample | None]:
    """A stored sample (with advantage, version and times sampled), or None."""
    rec = yield from get_sample_record(c, sample_id)
    return rec.sample if rec else None


def get_group_record(c: ClientState, group_id: str) -> Command[tuple[Group, dict[str, str]] | None]:
    """(group with its samples, sample_id -> pool name), or None."""
    if not isinstance(group_id, str) or not group_id:
        return None
    meta, head = yield Pipeline(lambda p: (
        p.fcall_ro("rtk_get", len(c.store_keys), *c.store_keys, "group", group_id),
        p.get(c.keys.group_data(group_id))))
    meta, head = _raise(meta), _raise(head)
    if not meta or head is None:
        return None
    skeys = [c.keys.sample_data(x) for x in P.group_sample_ids(meta)]
    return P.parse_group(meta, head, (yield call("mget", skeys)) if skeys else [])


def get_group(c: ClientState, group_id: str) -> Command[Group | None]:
    """A stored group with its samples, or None."""
    rec = yield from get_group_record(c, group_id)
    return rec[0] if rec else None


def store_stats_raw(c: ClientState, learner_version: int = -1) -> Command[list[Any]]:
    """The store's raw statistics reply (``services.buffer.stats.build_stats`` reads it)."""
    return (yield Fcall("rtk_stats", c.store_keys, [learner_version, STATS_MAX_LAG], ro=True))
