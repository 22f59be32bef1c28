"""Entry points: ``rethinker learn`` (RL training), ``rethinker sft-warmup`` (format warm-up) and
``python -m learner.main`` for torchrun / the deepspeed launcher (several ranks).

    rethinker learn --config configs/tiny-cpu.yaml [--set learner.total_steps=50] [--max-steps N]
    torchrun --nproc_per_node 2 -m learner.main --config ... --set learner.zero_stage=3
    deepspeed --num_gpus 8 learner/main.py --config configs/qwen2.5-vl-7b-8gpu.yaml
    rethinker sft-warmup --config ... --steps 50 --out .cache/models/tiny-warm
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _prepare_env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(repo, ".cache", "torch_extensions"))


def cmd_learn(args: argparse.Namespace) -> int:
    _prepare_env()
    from common.cli_args import config_from_args
    from common.config import ConfigError
    from common.logging import configure_logging

    cfg = config_from_args(args)
    configure_logging(cfg.run.log_level)
    from learner.trainer import Trainer, summary_json

    rank = int(os.environ.get("RANK", "0"))
    trainer = Trainer(cfg, progress=(not args.no_progress) and rank == 0 and sys.stderr.isatty())
    if cfg.learner.eval_every > 0 and rank == 0:
        if cfg.learner.zero_stage == 3 and trainer.world > 1:
            # Generating on rank 0 alone would need parameters that ZeRO-3 keeps on other ranks.
            raise ConfigError("learner.eval_every > 0 is not supported with ZeRO-3 on several ranks; "
                              "evaluate checkpoints with `rethinker eval` instead")
        from evaluation.periodic import make_eval_fn

        trainer.eval_fn = make_eval_fn(cfg, trainer.policy.module, processor=trainer.processor)
    try:
        summary = trainer.run(max_steps=args.max_steps)
    finally:
        trainer.close()
    if rank == 0:
        print(summary_json(summary), flush=True)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    _prepare_env()
    from common.cli_args import config_from_args
    from common.logging import configure_logging

    cfg = config_from_args(args)
    configure_logging(cfg.run.log_level)
    from learner.sft import warmup

    out = warmup(cfg, steps=args.steps if args.steps is not None else cfg.launcher.warmup_sft_steps, out_dir=args.out,
                 lr=cfg.launcher.warmup_sft_lr)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out, flush=True)
    return 0


# The argument functions import common/ inside: ``deepspeed learner/main.py`` runs this file before
# the repository is on sys.path (see the end of the module).


def add_learn_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker learn`` (and of ``python -m learner.main [learn]``)."""
    from common.cli_args import add_config_args

    add_config_args(p)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: learner.total_steps)")
    p.add_argument("--no-progress", action="store_true", help="no rich progress bar")


def add_sft_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker sft-warmup`` (and of ``python -m learner.main sft``)."""
    from common.cli_args import add_config_args

    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: launcher.warmup_sft_steps)")
    p.add_argument("--out", required=True, help="folder to write the warmed-up model to (transformers format)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m learner.main", description="VL-Rethinker learner")
    sub = ap.add_subparsers(dest="cmd")
    add_learn_arguments(sub.add_parser("learn"))
    add_sft_arguments(sub.add_parser("sft"))
    argv = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher appends --local_rank=N; torchrun sets LOCAL_RANK instead
    local = [a for a in argv if a.startswith(("--local_rank", "--local-rank"))]
    for a in local:
        if "=" in a:
            os.environ.setdefault("LOCAL_RANK", a.split("=", 1)[1])
        argv.remove(a)
    if not argv or argv[0] not in ("learn", "sft"):
        argv = ["learn", *argv]
    args = ap.parse_args(argv)
    from common.cli_args import run_command

    return run_command(cmd_learn if args.cmd == "learn" else cmd_sft, args, prog="rethinker")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file by launchers
    sys.exit(main())
