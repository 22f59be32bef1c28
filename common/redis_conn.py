"""Redis connection factories (sync and asyncio) built from ``RedisConfig``.

URLs may carry a password (``redis://:pw@host:6379/0``) or use TLS (``rediss://``); the config's
``password`` overrides the URL's so that it can come from a Secret.  Clients retry idempotent calls
on connection errors with exponential backoff (redis-py's ``Retry``), so a Redis restart is survived.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from common.config import RedisConfig, reveal

_RETRY_ON = [ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError, OSError]


def _kwargs(cfg: RedisConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": cfg.connect_timeout_s,
        "health_check_interval": 30,
        "decode_responses": False,
    }
    if cfg.password is not None:
        kw["password"] = reveal(cfg.password)
    if cfg.url.startswith("rediss://"):
        if cfg.tls_ca_certs:
            kw["ssl_ca_certs"] = cfg.tls_ca_certs
        if cfg.tls_insecure:
            kw["ssl_cert_reqs"] = "none"
    return kw


def sync_client(cfg: RedisConfig) -> redis.Redis:
    retry = redis.retry.Retry(
        ExponentialBackoff(cap=cfg.retry_backoff_max_s, base=cfg.retry_backoff_s), cfg.retry_attempts
    )
    return redis.Redis.from_url(cfg.url, retry=retry, retry_on_error=_RETRY_ON, **_kwargs(cfg))


def async_client(cfg: RedisConfig) -> aioredis.Redis:
    from redis.asyncio.retry import Retry as AsyncRetry

    retry = AsyncRetry(ExponentialBackoff(cap=cfg.retry_backoff_max_s, base=cfg.retry_backoff_s), cfg.retry_attempts)
    return aioredis.Redis.from_url(cfg.url, retry=retry, retry_on_error=_RETRY_ON, **_kwargs(cfg))


def describe(cfg: RedisConfig) -> str:
    """The URL with any password masked, for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(cfg.url)
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        netloc = ("***@" if creds else "") + host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
