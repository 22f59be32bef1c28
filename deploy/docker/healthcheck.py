#!/usr/bin/env python
"""Container health check of the rethinker images (Docker HEALTHCHECK, compose healthcheck).

``rethinker-healthcheck URL`` GETs URL and succeeds on HTTP 200.  Without a URL it works out what
the container runs from PID 1's command line (``rethinker serve verifier|buffer|rollout ...``, with
its ``--config``/``--set`` and the container's ``RETHINKER__*`` environment, through the same
``common.config.load_config`` the service uses) and probes ``http://127.0.0.1:<port>/healthz`` of
that service.  Any other command (``learn``, one-shot jobs) has no HTTP endpoint: healthy while it
runs.  Exit 0 healthy, 1 unhealthy, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

SERVICES = ("verifier", "buffer", "rollout")


def probe(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (local URL)
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def url_for_cmdline(argv: list[str]) -> str | None:
    """The /healthz URL of the service that ``argv`` starts, or None if it starts no service."""
    try:
        i = argv.index("serve")
    except ValueError:
        return None
    if i + 1 >= len(argv) or argv[i + 1] not in SERVICES:
        return None
    service = argv[i + 1]
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--config", "-c")
    opts.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = opts.parse_known_args(argv[i + 2 :])
    from common.config import load_config

    cfg = load_config(known.config, known.overrides)
    return f"http://127.0.0.1:{getattr(cfg, service).port}/healthz"


def pid1_cmdline() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0") if a]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmdline = None
    if "--cmdline" in argv:  # everything after it, verbatim (it may hold "--")
        i = argv.index("--cmdline")
        argv, cmdline = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="rethinker-healthcheck", description=__doc__.splitlines()[0],
                                epilog="--cmdline ARGS...: use this command line instead of PID 1's (last option)")
    p.add_argument("url", nargs="?", help="URL to GET (default: the /healthz of the service PID 1 runs)")
    p.add_argument("--timeout", type=float, default=4.0)
    args = p.parse_args(argv)
    url = args.url
    if url is None:
        try:
            url = url_for_cmdline(cmdline if cmdline is not None else pid1_cmdline())
        except Exception as exc:  # a bad config makes the container unhealthy, with the reason
            print(f"rethinker-healthcheck: {exc}", file=sys.stderr)
            return 1
        if url is None:
            return 0
    ok = probe(url, args.timeout)
    if not ok:
        print(f"rethinker-healthcheck: {url} is not healthy", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
