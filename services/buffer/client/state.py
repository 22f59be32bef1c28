"""What every buffer client holds, sync or asyncio: the config, its keys and its per-client caches.

The commands of the concern modules read and update a ``ClientState``; ``BufferClient`` and
``AsyncBufferClient`` (``clients.py``) are ``ClientState`` plus a redis-py connection.
"""

from __future__ import annotations

from common.config import RethinkerConfig
from common.redis_keys import RedisKeys
from services.buffer import protocol as P
from services.buffer.protocol import BadArgumentError


class ClientState:
    """Config checks, key names and the per-client caches shared by both clients."""

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
        self._loaded = False  # this client has checked (and if needed loaded) the function library
        self._group_ready = False  # the task stream's consumer group is known to exist
        self._tasks = P.TaskCache(cfg.buffer.task_cache_size)  # group id -> decoded task (images)
