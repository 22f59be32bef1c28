"""The ``rethinker`` command: it only registers subcommands; each part declares its own arguments.

Each subcommand is registered by one ``_add_*`` function below: it names the command and its help,
takes the arguments from the part's entry module (``add_arguments`` and friends in
``services/*/main.py``, ``learner/main.py``, ``evaluation/main.py``, ``rethinker/launcher.py`` ...)
and runs the part's command function, imported lazily so that ``rethinker version`` does not pay
for importing torch.  Config-taking commands share ``--config FILE`` and repeated
``--set section.field=value`` (common/cli_args.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from common.cli_args import add_config_args, config_from_args, run_command
from common.config import config_dict, config_to_yaml


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
    cfg = config_from_args(args)  # secrets (and a password in redis.url) print as ***
    if args.format == "json":
        import json

        print(json.dumps(config_dict(cfg), indent=2))
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
    b.set_defaults(func=_lazy("devtools.tiny_model", "cmd_build"))


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{synth}")
    s = dsub.add_parser("synth", help="write a synthetic visual question set in ViRL39K's schema")
    s.add_argument("out", metavar="OUT")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eval-fraction", type=float, default=0.1, help="share of rows in eval.parquet")
    s.add_argument("--image-size", type=int, default=56, help="image side in pixels (56 -> 4 vision tokens)")
    s.add_argument(
        "--kinds",
        default=None,
        help="comma-separated question kinds: largest_color,leftmost_color,largest_type,count,dominant_color (default: the first four)",
    )
    s.add_argument(
        "--levels",
        default=None,
        help="comma-separated difficulty levels of dominant_color, dealt in equal shares: 0,1,2 (default: 0)",
    )
    s.set_defaults(func=_lazy("devtools.synth_data", "cmd_synth"))


def _add_up(sub: argparse._SubParsersAction) -> None:
    from rethinker.launcher import add_arguments

    p = sub.add_parser("up", help="run the whole system locally (Redis, verifier, buffer, rollouts, learner)")
    add_arguments(p)
    p.set_defaults(func=_lazy("rethinker.launcher", "cmd_up"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from rethinker.demo import add_arguments

    p = sub.add_parser("demo", help="the CPU demo: tiny VLM, synthetic visual task, GRPO + SSR + rethinking")
    add_arguments(p)
    p.set_defaults(func=_lazy("rethinker.demo", "cmd_demo"))


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    from rethinker.ablation import add_arguments

    p = sub.add_parser("ablate", help="the SSR ablation: grpo / filter / ssr (x rethinking) over seeds, through the real system")
    add_arguments(p)
    p.set_defaults(func=_lazy("rethinker.ablation", "cmd_ablate"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from evaluation.main import add_eval_arguments

    p = sub.add_parser(
        "eval",
        help="evaluate a model on MathVista / MathVerse / MathVision / MMMU-Pro / EMMA (docs/evaluation.md)",
        description="Greedy decoding with the training prompt, judged by the verifier; resumable.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=_lazy("evaluation.main", "cmd_eval"))


def _add_chat(sub: argparse._SubParsersAction) -> None:
    from evaluation.main import add_chat_arguments

    p = sub.add_parser("chat", help="one-shot inference with the training prompt suffix and pixel limits")
    add_chat_arguments(p)
    p.set_defaults(func=_lazy("evaluation.main", "cmd_chat"))


def serve_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The shared ``rethinker serve SERVICE`` group: each service's registrar adds its parser here.

    The group is kept on ``sub`` itself: a table keyed by ``id(sub)`` would hand a new parser the
    group of a collected one that had the same id."""
    group = getattr(sub, "_rethinker_serve_group", None)
    if group is None:
        p = sub.add_parser("serve", help="run one service (verifier, buffer, rollout, ...)")
        group = p.add_subparsers(dest="service", required=True, metavar="SERVICE")
        sub._rethinker_serve_group = group  # type: ignore[attr-defined]
    return group


def _add_serve_rollout(sub: argparse._SubParsersAction) -> None:
    from services.rollout.main import add_arguments

    p = serve_parsers(sub).add_parser("rollout", help="a rollout server: engine + actor loop + weight receiver + HTTP")
    add_arguments(p)
    p.set_defaults(func=_lazy("services.rollout.main", "cmd_serve"))


def _add_serve_verifier(sub: argparse._SubParsersAction) -> None:
    from services.verifier.main import add_arguments

    p = serve_parsers(sub).add_parser("verifier", help="the rule-based verifier's HTTP service (uvicorn or --ray)")
    add_arguments(p)
    p.set_defaults(func=_lazy("services.verifier.main", "cmd_serve"))


def _add_serve_buffer(sub: argparse._SubParsersAction) -> None:
    from services.buffer.main import add_arguments

    p = serve_parsers(sub).add_parser("buffer", help="the SSR buffer's HTTP service (stats, dashboard, admin)")
    add_arguments(p)
    p.set_defaults(func=_lazy("services.buffer.main", "cmd_serve"))


def _add_learn(sub: argparse._SubParsersAction) -> None:
    from learner.main import add_learn_arguments, add_sft_arguments  # argparse only; torch is imported on use

    p = sub.add_parser("learn", help="run the learner (DeepSpeed GRPO + SSR, weight broadcast)")
    add_learn_arguments(p)
    p.set_defaults(func=_lazy("learner.main", "cmd_learn"))
    s = sub.add_parser("sft-warmup", help="supervised format warm-up; writes a model folder")
    add_sft_arguments(s)
    s.set_defaults(func=_lazy("learner.main", "cmd_sft"))


REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_version,
    _add_config,
    _add_tiny_model,
    _add_data,
    _add_up,
    _add_demo,
    _add_ablate,
    _add_eval,
    _add_chat,
    _add_serve_verifier,
    _add_serve_rollout,
    _add_serve_buffer,
    _add_learn,
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
        return run_command(args.func, args, prog="rethinker")
    except KeyboardInterrupt:
        print("rethinker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
