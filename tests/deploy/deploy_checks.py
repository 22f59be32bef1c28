"""Shared checks of the deployment files (compose, Kubernetes, Ray Serve) against the real code.

A container command is parsed with the real ``rethinker`` argparse parser
(``rethinker.cli.build_parser``; a ``torchrun`` prefix with torch's own launcher parser), a
container's configuration is loaded the way the process will load it
(``common.config.load_config(file, --set overrides, environ=container env)``), and HTTP probe
paths are compared with the routes the services' FastAPI apps really serve.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlsplit

from common.config import ENV_PREFIX, ConfigError, RethinkerConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The container images' working directory: the configs' relative paths (.cache/..., runs/...)
# resolve under it (WORKDIR of deploy/docker/Dockerfile.*).
WORKDIR = "/workspace"

# Environment variables the manifests may set that are not config fields, and why.
EXTRA_ENV = {
    "OMP_NUM_THREADS": "threads per process (1 per CPU rank: stack notes)",
    "HF_TOKEN": "hub token for downloading the 7B model (GPU deployments)",
}

# HTTP paths the manifests probe or document, per service.
SERVICE_PATHS = {
    "verifier": {"/healthz"},
    "buffer": {"/healthz", "/v1/stats"},
    "rollout": {"/healthz"},
}


class CommandError(AssertionError):
    pass


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str], what: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(list(argv))
    except SystemExit:
        raise CommandError(f"{what} {' '.join(argv)!r} is rejected by the parser: {err.getvalue().strip()}") from None


@dataclass
class Command:
    """A parsed container command line."""

    argv: list[str]  # the rethinker arguments (after `rethinker` / `-m rethinker.cli`)
    args: argparse.Namespace
    launcher: str  # "rethinker" or "torchrun"

    @property
    def role(self) -> str:
        """'verifier' | 'buffer' | 'rollout' for `serve X`, else the command name (`learn`, `data`, ...)."""
        return self.argv[1] if self.argv[0] == "serve" else self.argv[0]

    @property
    def config(self) -> str | None:
        return getattr(self.args, "config", None)

    @property
    def overrides(self) -> list[str]:
        return list(getattr(self.args, "overrides", None) or [])


def parse_command(argv: Sequence[str]) -> Command:
    """Parse a container's full command line (``rethinker ...`` or ``torchrun ... -m rethinker.cli ...``)."""
    from rethinker.cli import build_parser

    argv = list(argv)
    if not argv:
        raise CommandError("empty command")
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        ns = _parse(get_args_parser(), argv[1:], "torchrun")
        if not ns.module or ns.training_script != "rethinker.cli":
            raise CommandError(f"torchrun must run the module rethinker.cli (-m rethinker.cli), got {argv!r}")
        rest = list(ns.training_script_args)
    elif argv[0] == "rethinker":
        rest = argv[1:]
    else:
        raise CommandError(f"a rethinker container must run `rethinker` or `torchrun -m rethinker.cli`, got {argv!r}")
    if not rest:
        raise CommandError(f"{argv!r}: no rethinker command")
    return Command(rest, _parse(build_parser(), rest, "rethinker"), argv[0])


def check_env_names(env: Mapping[str, str], where: str) -> None:
    for name in env:
        if not name.startswith(ENV_PREFIX) and name not in EXTRA_ENV:
            raise AssertionError(f"{where}: env {name} is neither a {ENV_PREFIX}SECTION__FIELD config path nor in EXTRA_ENV")


def effective_config(config_text: str | None, overrides: Sequence[str], env: Mapping[str, str], where: str) -> RethinkerConfig:
    """The config the process will run with; every RETHINKER__ variable must name a real field."""
    check_env_names(env, where)
    for name, value in env.items():  # one by one, so that an error names the variable
        if name.startswith(ENV_PREFIX):
            try:
                load_config(None, environ={name: value})
            except ConfigError as exc:
                raise AssertionError(f"{where}: env {name}={value!r} is not a valid config override: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if config_text is not None:
            path = Path(tmp) / "config.yaml"
            path.write_text(config_text)
        try:
            return load_config(path, overrides, environ=dict(env))
        except ConfigError as exc:
            raise AssertionError(f"{where}: the container's config does not load: {exc}") from None


def host_port(url: str, default_port: int | None = None) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise AssertionError(f"{url!r} has no host")
    return parts.hostname, parts.port or default_port or {"http": 80, "https": 443, "redis": 6379}[parts.scheme]


def config_sources() -> dict[str, Path]:
    return {p.name: p for p in sorted((REPO / "configs").glob("*.yaml"))}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise AssertionError(f"{path}: dangling line continuation")
    return out
