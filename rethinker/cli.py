"""The ``rethinker`` command: a thin argparse front over the parts' entry points.

Each subcommand is registered by one ``_add_*`` function below and imports its implementation
lazily, so ``rethinker version`` does not pay for importing torch.  Config-taking commands share
``--config FILE`` and repeated ``--set section.field=value`` (see common/config.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from common.config import ConfigError, RethinkerConfig, config_dict, config_to_yaml, load_config


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


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="the SSR ablation: grpo / filter / ssr (x rethinking) over seeds, through the real system")
    add_config_args(p)
    p.add_argument("--modes", default="grpo,filter,ssr", help="comma-separated algorithm.ssr.mode values (default: all three)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--seed-list", default=None, help="explicit comma-separated seeds (instead of --seeds)")
    p.add_argument("--rethink", default="off", help="comma-separated variants: off, on, nll0 (rethinking with nll_coef 0)")
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (default learner.total_steps)")
    p.add_argument("--out", default=None, help="output folder (default run.run_dir)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in <out>/ablation.json")
    p.set_defaults(func=_lazy("rethinker.ablation", "cmd_ablate"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on MathVista / MathVerse / MathVision / MMMU-Pro / EMMA (docs/evaluation.md)",
        description="Greedy decoding with the training prompt, judged by the verifier; resumable.",
    )
    add_config_args(p)
    p.add_argument("--model", metavar="PATH_OR_NAME", help="model folder or hub id (default: model.path)")
    p.add_argument("--bench", action="append", metavar="NAME[:VARIANT][=PATH],...",
                   help="benchmarks, comma-separated or repeated (default: eval.benchmarks); see --list")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding one sub-folder per benchmark (default: eval.data_dir)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: eval.out_dir/<model>[-rethink])")
    p.add_argument("--server", action="append", metavar="URL", help="decode with running rollout servers (repeatable)")
    p.add_argument("--force-rethink", action="store_true", help='append "\\n\\nWait" and report accuracy before/after')
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="default: eval.max_new_tokens (2048)")
    p.add_argument("--batch-size", type=int, metavar="N", help="prompts per decoding batch (default: eval.batch_size)")
    p.add_argument("--max-items", type=int, metavar="N", help="first N items of each benchmark")
    p.add_argument("--judge-workers", type=int, metavar="N", help="verifier processes; 0 grades in-process")
    p.add_argument("--engine", choices=["hf", "vllm"], help="local engine (default: rollout.engine)")
    p.add_argument("--device", metavar="DEV", help="hf engine device: auto, cpu, cuda:0 ...")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    p.add_argument("--list", action="store_true", help="list the benchmarks, variants and expected folders")
    p.set_defaults(func=_lazy("evaluation.main", "cmd_eval"))


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="one-shot inference with the training prompt suffix and pixel limits")
    add_config_args(p)
    p.add_argument("question", help="the question (images go first, or at <image> placeholders)")
    p.add_argument("--model", metavar="PATH_OR_NAME", help="model folder or hub id (default: model.path)")
    p.add_argument("--image", action="append", metavar="FILE", help="an image file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="default: eval.max_new_tokens (2048)")
    p.add_argument("--force-rethink", action="store_true", help='continue after "\\n\\nWait" and show both answers')
    p.add_argument("--gold", metavar="ANSWER", help="grade the response against this answer")
    p.add_argument("--server", action="append", metavar="URL", help="use a running rollout server instead of a local engine")
    p.add_argument("--engine", choices=["hf", "vllm"], help="local engine (default: rollout.engine)")
    p.add_argument("--device", metavar="DEV", help="hf engine device: auto, cpu, cuda:0 ...")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_lazy("evaluation.chat", "cmd_chat"))


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
    p = serve_parsers(sub).add_parser("rollout", help="a rollout server: engine + actor loop + weight receiver + HTTP")
    add_config_args(p)
    p.set_defaults(func=_lazy("services.rollout.main", "cmd_serve"))


def _add_serve_verifier(sub: argparse._SubParsersAction) -> None:
    p = serve_parsers(sub).add_parser("verifier", help="the rule-based verifier's HTTP service (uvicorn or --ray)")
    add_config_args(p)
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (batching + autoscaling) instead of uvicorn")
    p.set_defaults(func=_lazy("services.verifier.main", "cmd_serve"))


def _add_serve_buffer(sub: argparse._SubParsersAction) -> None:
    p = serve_parsers(sub).add_parser("buffer", help="the SSR buffer's HTTP service (stats, dashboard, admin)")
    add_config_args(p)
    p.add_argument("--host", help="listen address (default buffer.host)")
    p.add_argument("--port", type=int, help="listen port (default buffer.port)")
    p.set_defaults(func=_lazy("services.buffer.server", "cmd_serve"))


def _add_learn(sub: argparse._SubParsersAction) -> None:
    from learner.main import add_learn_args, add_sft_args  # argparse only; torch is imported on use

    p = sub.add_parser("learn", help="run the learner (DeepSpeed GRPO + SSR, weight broadcast)")
    add_config_args(p)
    add_learn_args(p)
    p.set_defaults(func=_lazy("learner.main", "cmd_learn"))
    s = sub.add_parser("sft-warmup", help="supervised format warm-up; writes a model folder")
    add_config_args(s)
    add_sft_args(s)
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
        return int(args.func(args) or 0)
    except (ConfigError, CLIError) as exc:
        print(f"rethinker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rethinker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the importable module, not this `__main__` copy, so that `CLIError` raised by lazily
    # imported commands (which import `rethinker.cli.CLIError`) is the class caught above.
    from rethinker.cli import main as _main

    sys.exit(_main())
