"""Every Redis key name the system uses, in one place.

Keys are ``<namespace>:{<slot>}:<name>``.  The ``{...}`` part is a Redis Cluster hash tag: all keys
that one server-side script touches share a tag, so each script's keys live in one slot and the
store works unchanged on a cluster (see docs/buffer.md for how the store shards when one primary is
no longer enough: one tag per shard, ``{<shard>}``).

- ``{q}``   prompt queue: the stream of prompt tasks, its consumer group, dedup set, in-flight count.
- ``{s}``   trajectory store: groups, samples, fresh/replay priority indexes, counters, stats.
- ``{w}``   versions and membership: the published policy version, the rollout-server registry and
            the weight-sync state (round, checkpoint pointer, receivers' membership).

Each fact has one owner, the only module that writes it (docs/buffer.md, "Who writes, who reads"):
``{q}`` / ``{s}`` / ``policy_version*`` / ``rollout_server*``: ``services.buffer.client`` (modules
``queue``, ``store``, ``versions``, ``registry``); ``sync_round`` / ``sync_members``:
``weight_transport``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    namespace: str = "rethinker"
    shard: str = "s"  # trajectory-store hash tag; one per shard when sharded

    def _k(self, tag: str, name: str) -> str:
        return f"{self.namespace}:{{{tag}}}:{name}"

    # ---- prompt queue ({q})
    @property
    def task_stream(self) -> str:
        return self._k("q", "tasks")

    @property
    def task_group(self) -> str:
        """Consumer-group name (not a key) of the rollout servers on the task stream."""
        return "rollout"

    def task_published_in(self, epoch: int) -> str:
        """Hash prompt_id -> task_id of the tasks published in one epoch (duplicate detection)."""
        return self._k("q", f"published:{int(epoch)}")

    def queue_pattern(self) -> str:
        return self._k("q", "*")

    # ---- trajectory store ({s} or {shard})
    @property
    def sample_meta(self) -> str:
        """Hash sample index -> static per-sample metadata (sample id, group, advantage, version)."""
        return self._k(self.shard, "sample_meta")

    @property
    def counters(self) -> str:
        return self._k(self.shard, "counters")

    @property
    def stats_series(self) -> str:
        return self._k(self.shard, "stats_series")

    @property
    def store_meta(self) -> str:
        return self._k(self.shard, "meta")

    # Buffer-internal store keys (services/buffer; the Lua library documents their layout).
    @property
    def sample_data_prefix(self) -> str:
        return self._k(self.shard, "sd:")

    def sample_data(self, sample_id: str) -> str:
        """String: codec bytes of one stored Sample."""
        return self.sample_data_prefix + sample_id

    @property
    def group_data_prefix(self) -> str:
        return self._k(self.shard, "gd:")

    def group_data(self, group_id: str) -> str:
        """String: codec bytes of a stored Group without its samples (holds the task and images)."""
        return self.group_data_prefix + group_id

    @property
    def group_meta(self) -> str:
        return self._k(self.shard, "group_meta")

    @property
    def group_order(self) -> str:
        """List of group ids, oldest first (capacity eviction)."""
        return self._k(self.shard, "group_order")

    def pool_counts(self, pool: str) -> str:
        """Hash bucket -> count of a sampling pool (``f`` fresh, ``r`` replay, ``z`` zero-advantage)."""
        return self._k(self.shard, f"pool:{pool}:cnt")

    @property
    def slot_prefix(self) -> str:
        """Prefix of the bucket arrays ``slot:<pool>:<bucket>`` (u32 sample indices, BITFIELD)."""
        return self._k(self.shard, "slot:")

    @property
    def sample_index(self) -> str:
        """Hash sample_id -> the sample's integer index in the record array."""
        return self._k(self.shard, "sidx")

    @property
    def records(self) -> str:
        """String of fixed-width per-sample records (state, bucket, position, reuse), BITFIELD."""
        return self._k(self.shard, "rec")

    @property
    def free_indices(self) -> str:
        return self._k(self.shard, "free")

    @property
    def replay_fifo(self) -> str:
        return self._k(self.shard, "replay_fifo")

    @property
    def by_version(self) -> str:
        """Zset sample_id -> policy version of every pooled sample (staleness eviction)."""
        return self._k(self.shard, "by_version")

    @property
    def version_series(self) -> str:
        return self._k(self.shard, "version_series")

    @property
    def version_index(self) -> str:
        return self._k(self.shard, "version_index")

    def sample_request(self, request_id: str) -> str:
        """Cached result of one ``sample`` call (idempotent retries)."""
        return self._k(self.shard, f"req:{request_id}")

    def store_pattern(self) -> str:
        return self._k(self.shard, "*")

    # ---- versions and membership ({w})
    @property
    def policy_version(self) -> str:
        """Hash: the latest published ``PolicyVersion`` (version, step, bytes, time); the one
        record of the learner's version (``services.buffer.client.versions``)."""
        return self._k("w", "policy_version")

    @property
    def policy_version_high(self) -> str:
        """Zset with one member ``high``: the highest policy version ever published (``ZADD GT``),
        so that a restarted learner never reuses a version number."""
        return self._k("w", "policy_version_high")

    @property
    def policy_channel(self) -> str:
        """Pub/sub channel announcing new versions and weight-sync rounds."""
        return self._k("w", "policy_events")

    @property
    def rollout_servers(self) -> str:
        """Hash server_id -> a rollout server process's registration (address, engine, loaded
        version, readiness, load); the rollout-server registry (``services.buffer.client.registry``)."""
        return self._k("w", "servers")

    @property
    def rollout_server_alive(self) -> str:
        """Zset server_id -> registry heartbeat expiry (Redis server time)."""
        return self._k("w", "server_alive")

    @property
    def sync_round(self) -> str:
        """Hash of the weight sync (``weight_transport``): field ``round`` (the current round's
        descriptor), ``checkpoint`` (the checkpoint pointer for late joiners), ``last_result`` (the
        last round's report)."""
        return self._k("w", "sync_round")

    @property
    def sync_members(self) -> str:
        """Hash member id -> weight-sync join record (token proof, backend, GPU, heartbeat, loaded
        version) of each weight *receiver*; the sender invites from it.  Not the rollout-server
        registry (``rollout_servers``): see ``services.buffer.client.registry``."""
        return self._k("w", "sync_members")

    def all_patterns(self) -> list[str]:
        """Glob patterns covering every key of this namespace (used by admin clear and tests)."""
        return [f"{self.namespace}:*"]
