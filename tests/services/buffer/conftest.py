"""Fixtures of the buffer tests: a namespaced config on the shared Redis, clients, private servers."""

from __future__ import annotations

import pytest

from buffer_testlib import SHARED_REDIS_URL, RedisServer, delete_namespace, make_cfg
from services.buffer.client import AsyncBufferClient, BufferClient


@pytest.fixture
def cfg():
    c = make_cfg()
    yield c
    delete_namespace(SHARED_REDIS_URL, c.redis.namespace)


@pytest.fixture
def client(cfg):
    c = BufferClient(cfg)
    yield c
    c.close()


@pytest.fixture
async def aclient(cfg):
    c = AsyncBufferClient(cfg)
    yield c
    await c.close()


@pytest.fixture
def private_redis(tmp_path):
    """Factory of private redis-server processes, all stopped at teardown."""
    servers: list[RedisServer] = []

    def start(**kw) -> RedisServer:
        s = RedisServer(tmp_path / f"redis{len(servers)}", **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
