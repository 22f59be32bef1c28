"""What every config-taking entry point shares: ``--config FILE`` and repeated ``--set
section.field=value`` (layered over the environment, see common/config.py), the usage error the
entry points raise for bad command-line input, and ``run_command``, which turns both kinds of user
error into one ``PROG: error: ...`` line and exit status 2.

The ``rethinker`` command (rethinker/cli.py) and each process's own ``main.py`` build on these, so a
process started as ``python -m <part>.main`` reads its config exactly as ``rethinker ...`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from common.config import ConfigError, RethinkerConfig, load_config
from common.errors import CommonError


class UsageError(CommonError):
    """A user error on the command line: printed as ``PROG: error: ...`` with exit status 2."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config/-c FILE`` and repeated ``--set SECTION.FIELD=VALUE`` (``args.config``, ``args.overrides``)."""
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable), e.g. --set learner.lr=1e-6",
    )


def config_from_args(args: argparse.Namespace) -> RethinkerConfig:
    """The config of ``add_config_args``' arguments: the file, then the environment, then ``--set``."""
    return load_config(getattr(args, "config", None), list(getattr(args, "overrides", None) or []))


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, *, prog: str) -> int:
    """``func(args)``; a ``ConfigError`` or ``UsageError`` prints ``PROG: error: MESSAGE`` to stderr
    and returns 2 (no traceback)."""
    try:
        return int(func(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
