"""The SSR buffer: Redis data plane of the system (prompt queue + prioritized trajectory store).

- ``client``   ``BufferClient`` / ``AsyncBufferClient``: the only package other parts import (one
              module per key group; each command written once for both clients).
- ``protocol`` argument/reply handling of the Redis Functions shared by both clients.
- ``fastcodec`` byte-identical fast paths of ``common.codec`` for Sample frames (the hot loop).
- ``library``  the Redis Functions library (``lua/rethinker_buffer.lua``): load + version check.
- ``stats``    the statistics dict of ``GET /v1/stats`` and the dashboard.
- ``app``      FastAPI service (inspection, administration, dashboard, metrics).
- ``main``     entry point of the buffer's HTTP service (``rethinker serve buffer``, ``python -m services.buffer.main``).

See docs/buffer.md.
"""
