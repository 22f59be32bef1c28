"""The buffer's Redis Functions library: its source, version and loading (sync and asyncio).

The library (``lua/rethinker_buffer.lua``) carries a version string, the first 16 hex digits of the
SHA-1 of its source.  ``ensure_library`` asks the server for the version it holds
(``FCALL_RO rtk_version``) and loads the library with ``FUNCTION LOAD REPLACE`` when it is missing or
different, so every client that starts makes sure the server runs the code it was built with.
Functions are persisted by Redis (AOF/RDB) like data; a server that lost them (restarted without
persistence) is detected by the clients' "Function not found" retry path, which reloads.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

import redis
import redis.asyncio as aioredis

LIBRARY_NAME = "rethinker_buffer"
_PLACEHOLDER = "__LIB_VERSION__"


@lru_cache(maxsize=1)
def library_source() -> tuple[str, str]:
    """(code with the version filled in, version)."""
    raw = resources.files("services.buffer").joinpath("lua/rethinker_buffer.lua").read_text()
    version = hashlib.sha1(raw.encode()).hexdigest()[:16]
    return raw.replace(_PLACEHOLDER, version), version


def is_missing_function(exc: Exception) -> bool:
    msg = str(exc)
    return "Function not found" in msg or "function not found" in msg.lower()


def _server_version(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None


def ensure_library(r: redis.Redis, *, force: bool = False) -> str:
    """Load the library into ``r`` unless it already runs this version; returns the version."""
    code, version = library_source()
    if not force:
        try:
            if _server_version(r.fcall_ro("rtk_version", 0)) == version:
                return version
        except redis.ResponseError:
            pass
    r.function_load(code, replace=True)
    return version


async def ensure_library_async(r: aioredis.Redis, *, force: bool = False) -> str:
    code, version = library_source()
    if not force:
        try:
            if _server_version(await r.fcall_ro("rtk_version", 0)) == version:
                return version
        except redis.ResponseError:
            pass
    await r.function_load(code, replace=True)
    return version
