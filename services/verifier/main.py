"""Entry points of the verifier service: ``serve(cfg, ray=False)`` and the CLI glue.

``rethinker serve verifier [--config FILE] [--set a.b=c ...] [--ray]`` calls ``cmd_serve``; the
module also runs standalone: ``python -m services.verifier.main [--config FILE] [--set ...] [--ray]``.
Under uvicorn the app listens on ``verifier.host:verifier.port`` and stops its worker pool on
SIGTERM/SIGINT; with ``--ray`` it is deployed on Ray Serve (``serve_ray``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from common.cli_args import add_config_args, config_from_args, run_command
from common.config import RethinkerConfig


def serve(cfg: RethinkerConfig, ray: bool = False) -> None:
    """Run the verifier until interrupted (blocking)."""
    if ray:
        from .serve_ray import run

        run(cfg, blocking=True)
        return
    import uvicorn

    from .app import create_app

    vc = cfg.verifier
    uvicorn.run(
        create_app(cfg),
        host=vc.host,
        port=vc.port,
        log_level=cfg.run.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker serve verifier`` (and of this module run standalone)."""
    add_config_args(p)
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (batching + autoscaling) instead of uvicorn")


def cmd_serve(args: argparse.Namespace) -> int:
    """``rethinker serve verifier`` (argparse namespace with config, overrides, ray)."""
    cfg = config_from_args(args)
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(cfg, ray=bool(getattr(args, "ray", False)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.verifier.main", description="run the verifier service")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(cmd_serve, args, prog="verifier")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
