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

from common.config import ConfigError, RethinkerConfig, load_config


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


def add_arguments(p: argparse.ArgumentParser, *, with_config: bool = True) -> None:
    if with_config:
        p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (batching + autoscaling) instead of uvicorn")


def cmd_serve(args: argparse.Namespace) -> int:
    """``rethinker serve verifier`` (argparse namespace with config, overrides, ray)."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", []) or [])
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(cfg, ray=bool(getattr(args, "ray", False)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.verifier.main", description="run the verifier service")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_serve(args)
    except ConfigError as exc:
        print(f"verifier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
