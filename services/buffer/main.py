"""Entry points of the buffer's HTTP service: ``rethinker serve buffer`` and ``python -m services.buffer.main``.

Loads the config (``--config``/``--set``/env), makes sure the Redis Functions library is loaded
(the app does it again at start-up, so a Redis that is down at first is tolerated), and serves
``services.buffer.app.create_app`` with uvicorn on ``buffer.host:buffer.port`` (``--host``/``--port``
override).  SIGTERM/SIGINT stop it gracefully (uvicorn).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from common.cli_args import add_config_args, config_from_args, run_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker serve buffer`` (and of this module run standalone)."""
    add_config_args(p)
    p.add_argument("--host", help="listen address (default buffer.host)")
    p.add_argument("--port", type=int, help="listen port (default buffer.port)")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from common.logging import configure_logging, get_logger
    from services.buffer.app import create_app

    cfg = config_from_args(args)
    if getattr(args, "host", None):
        cfg.buffer.host = args.host
    if getattr(args, "port", None) is not None:
        cfg.buffer.port = args.port
    configure_logging(cfg.run.log_level)
    get_logger("buffer").info("buffer_serve", host=cfg.buffer.host, port=cfg.buffer.port, namespace=cfg.redis.namespace)
    uvicorn.run(
        create_app(cfg), host=cfg.buffer.host, port=cfg.buffer.port, log_level=cfg.run.log_level.lower(),
        access_log=False, timeout_graceful_shutdown=5,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.buffer.main", description="run the SSR buffer's HTTP service")
    add_arguments(parser)
    return run_command(cmd_serve, parser.parse_args(argv), prog="buffer")


if __name__ == "__main__":
    sys.exit(main())
