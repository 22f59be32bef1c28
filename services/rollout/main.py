"""``rethinker serve rollout``: run one rollout server (engine, actor loop, weights, HTTP).

Start-up order: the HTTP server comes up first (``/healthz`` answers 503 while the model loads),
then the engine, the weight receiver (latest published checkpoint first), the registry heartbeat
and the actor loop.  SIGTERM/SIGINT: the actor finishes its batch within
``rollout.shutdown_grace_s`` (else gives its tasks back), the server unregisters, HTTP stops, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Iterator

from common.cli_args import add_config_args, config_from_args, run_command
from common.config import RethinkerConfig
from common.logging import configure_logging, get_logger

log = get_logger("rollout.main")


def _uvicorn_server(app, cfg: RethinkerConfig):  # noqa: ANN001, ANN202
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are ours (graceful actor stop first)
            yield

    config = uvicorn.Config(app, host=cfg.rollout.host, port=cfg.rollout.port, log_level="warning", access_log=False,
                            lifespan="off")
    return _Server(config)


async def serve(cfg: RethinkerConfig) -> int:
    from services.rollout.app import create_app
    from services.rollout.server import RolloutServer

    server = RolloutServer(cfg)
    http = _uvicorn_server(create_app(server), cfg)
    http_task = asyncio.create_task(http.serve(), name="rollout-http")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rc = 0
    stop_wait = asyncio.create_task(stop.wait())
    try:
        start = asyncio.create_task(server.start())
        done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            start.result()  # raises if start-up failed
            waiter = asyncio.create_task(server.wait())  # ends if the actor loop dies
            await asyncio.wait({waiter, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not stop.is_set():
                log.error("actor_loop_ended", server_id=server.server_id, error=server.stats.last_error)
                rc = 1
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        log.info("shutting_down", server_id=server.server_id)
    except Exception as exc:  # noqa: BLE001 - report and exit non-zero
        log.exception("rollout_failed", error=f"{type(exc).__name__}: {exc}")
        rc = 1
    finally:
        stop_wait.cancel()
        await server.stop()
        http.should_exit = True
        await asyncio.gather(http_task, return_exceptions=True)
    return rc


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker serve rollout`` (and of this module run standalone)."""
    add_config_args(p)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    configure_logging(cfg.run.log_level)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per verifier call otherwise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return asyncio.run(serve(cfg))


def main(argv: list[str] | None = None) -> int:
    """``python -m services.rollout.main --config F --set ...``"""
    p = argparse.ArgumentParser(prog="python -m services.rollout.main")
    add_arguments(p)
    return run_command(cmd_serve, p.parse_args(argv), prog="rollout")


if __name__ == "__main__":
    raise SystemExit(main())
