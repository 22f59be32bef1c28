"""The ``rethinker`` command: a thin argparse front over the parts' entry points.

Each subcommand is registered by one ``_add_*`` function below and imports its implementation
lazily, so ``rethinker version`` does not pay for importing torch.  Config-taking commands share
``--config FILE`` and repeated ``--set section.field=value`` (see common/config.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from common.config import ConfigError, RethinkerConfig, config_to_yaml, load_config


class CLIError(Exception):
    """A user error: printed as ``rethinker: error: ...`` with exit status 2."""


def add_config_args(p: argparse.ArgumentParser) -> None:
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
    return load_config(args.config, args.overrides)


# --------------------------------------------------------------------------- built-in commands


def _cmd_version(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("vl-rethinker")
    except PackageNotFoundError:
        v = "0+unknown"
    print(f"rethinker {v}")
    if args.verbose:
        for pkg in ("torch", "transformers", "deepspeed", "ray", "redis", "math-verify", "vllm"):
            try:
                print(f"  {pkg} {version(pkg)}")
            except PackageNotFoundError:
                print(f"  {pkg} (not installed)")
    return 0


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the version")
    p.add_argument("--verbose", "-v", action="store_true", help="also print key library versions")
    p.set_defaults(func=_cmd_version)


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.format == "json":
        print(cfg.model_dump_json(indent=2))
    else:
        print(config_to_yaml(cfg), end="")
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from common.config_docs import render_markdown

    print(render_markdown(), end="")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect configuration")
    csub = p.add_subparsers(dest="config_cmd", required=True, metavar="{show,schema}")
    show = csub.add_parser("show", help="print the effective config (file + env + --set)")
    add_config_args(show)
    show.add_argument("--format", choices=["yaml", "json"], default="yaml")
    show.set_defaults(func=_cmd_config_show)
    schema = csub.add_parser("schema", help="print the configuration reference (markdown)")
    schema.set_defaults(func=_cmd_config_schema)


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A command implementation imported only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args) or 0

    return run


def _add_tiny_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="build the tiny offline Qwen2.5-VL")
    tsub = p.add_subparsers(dest="tiny_cmd", required=True, metavar="{build}")
    b = tsub.add_parser("build", help="build a tiny random-init Qwen2.5-VL + tokenizer + processor into DIR")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", choices=["tiny", "small"], default="tiny")
    b.set_defaults(func=_lazy("common.tiny_model", "cmd_build"))


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{synth}")
    s = dsub.add_parser("synth", help="write a synthetic visual question set in ViRL39K's schema")
    s.add_argument("out", metavar="OUT")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_lazy("common.data.synth", "cmd_synth"))


def _add_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run the whole system locally (Redis, verifier, buffer, rollouts, learner)")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="override learner.total_steps")
    p.add_argument("--no-learner", action="store_true", help="start the services only (Ctrl-C stops them)")
    p.set_defaults(func=_lazy("rethinker.launcher", "cmd_up"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the CPU demo: tiny VLM, synthetic visual task, GRPO + SSR + rethinking")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="override learner.total_steps")
    p.set_defaults(func=_lazy("rethinker.demo", "cmd_demo"))


REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_version,
    _add_config,
    _add_tiny_model,
    _add_data,
    _add_up,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rethinker",
        description="VL-Rethinker: GRPO + Selective Sample Replay + Forced Rethinking as services",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CLIError) as exc:
        print(f"rethinker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rethinker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
