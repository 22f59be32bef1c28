"""``rethinker serve buffer``: run the buffer's HTTP service with uvicorn.

Loads the config (``--config``/``--set``/env), makes sure the Redis Functions library is loaded
(the app does it again at start-up, so a Redis that is down at first is tolerated), and serves
``services.buffer.app.create_app`` on ``buffer.host:buffer.port`` (``--host``/``--port`` override).
SIGTERM/SIGINT stop it gracefully (uvicorn).
"""

from __future__ import annotations

import argparse

import uvicorn

from common.config import load_config
from common.logging import configure_logging, get_logger
from services.buffer.app import create_app

log = get_logger("buffer")


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "host", None):
        cfg.buffer.host = args.host
    if getattr(args, "port", None) is not None:
        cfg.buffer.port = args.port
    configure_logging(cfg.run.log_level)
    log.info("buffer_serve", host=cfg.buffer.host, port=cfg.buffer.port, namespace=cfg.redis.namespace)
    uvicorn.run(
        create_app(cfg), host=cfg.buffer.host, port=cfg.buffer.port, log_level=cfg.run.log_level.lower(),
        access_log=False, timeout_graceful_shutdown=5,
    )
    return 0
