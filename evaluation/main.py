"""The evaluation part's entry points: ``rethinker eval`` (the benchmark runner) and ``rethinker chat``.

Each command's arguments are declared here (``add_eval_arguments``, ``add_chat_arguments``) and
run by ``cmd_eval`` / ``cmd_chat`` (the latter is evaluation/chat.py's ``run_chat``).

    rethinker eval --model PATH_OR_NAME --bench mathvista,mathverse --data-dir DIR
                   [--server URL ...] [--force-rethink] [--out DIR] [--max-items N] ...

Loads the benchmarks (evaluation.benchmarks), decodes greedily with a local engine
(``rollout.engine``: hf on CPU, vllm on GPU) or with running rollout servers (``--server``,
round-robin), judges with the verifier, and writes ``OUT/results/<bench>.jsonl``,
``OUT/summary.json`` and ``OUT/summary.md``.  Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli_args import UsageError, add_config_args, run_command
from common.config import RethinkerConfig, load_config

if TYPE_CHECKING:  # the modules below are imported when a command runs: building the parser stays cheap
    from evaluation.benchmarks import EvalItem
    from evaluation.generation import Decoder


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker eval``."""
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


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker chat`` (evaluation/chat.py)."""
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


def cmd_chat(args: argparse.Namespace) -> int:
    """``rethinker chat``: see evaluation/chat.py."""
    from evaluation.chat import run_chat

    return run_chat(args)


def model_slug(model: str) -> str:
    """A folder name for a model path or hub id: its last two path parts, safe characters only."""
    parts = [p for p in re.split(r"[\\/]+", model.strip()) if p and p not in (".", "..")]
    name = "-".join(parts[-2:]) if parts else "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def config_for(args: argparse.Namespace) -> RethinkerConfig:
    """The config file + env + ``--set``, then the command's own flags (validated like the rest)."""
    overrides = list(getattr(args, "overrides", []) or [])
    for flag, field in (("max_new_tokens", "eval.max_new_tokens"), ("batch_size", "eval.batch_size"),
                        ("max_items", "eval.max_items"), ("judge_workers", "eval.judge_workers")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{field}={int(value)}")
    if getattr(args, "force_rethink", False):
        overrides.append("eval.force_rethink=true")
    cfg = load_config(getattr(args, "config", None), overrides)
    # strings are assigned as given (not parsed as YAML: a path may contain ':' or '#')
    if getattr(args, "model", None):
        cfg.model.path = args.model
        cfg.model.build_tiny_if_missing = False  # an explicit model is used as given
    if getattr(args, "device", None):
        cfg.rollout.device = args.device
    if getattr(args, "engine", None):
        cfg.rollout.engine = args.engine
    return cfg


def bench_args(values: list[str] | None, default: list[str]) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [b.strip() for b in v.split(",") if b.strip()]
    return out or list(default)


def make_decoder(cfg: RethinkerConfig, servers: list[str]) -> tuple[Decoder, Any]:
    """The decoder for ``servers`` (HTTP) or a local engine; returns (decoder, engine or None)."""
    from evaluation.generation import EngineDecoder

    if servers:
        from evaluation.server_decoder import ServerDecoder

        return ServerDecoder(servers, cfg), None
    from services.rollout.engines import make_engine

    engine = make_engine(cfg)
    return EngineDecoder(engine, owns_engine=True), engine


def load_all(refs: list[str], data_dir: str | None, max_items: int | None) -> dict[str, list[EvalItem]]:
    from evaluation.benchmarks import BenchmarkError, load_benchmark, parse_bench

    out: dict[str, list[EvalItem]] = {}
    for r in refs:
        ref = parse_bench(r)
        if ref.key in out:
            continue
        items = load_benchmark(ref, data_dir, max_items=max_items)
        if not items:
            raise BenchmarkError(f"{ref.key}: no items")
        out[ref.key] = items
    return out


def print_benchmarks() -> None:
    from evaluation.benchmarks import REGISTRY

    for name, spec in REGISTRY.items():
        variants = ", ".join(f"{v}{' (default)' if v == spec.default_variant else ''}" for v in spec.variants)
        print(f"{name:12s} {spec.description}\n{'':12s} variants: {variants}; folders: {', '.join(spec.dir_names)}")


async def run_eval(
    cfg: RethinkerConfig,
    benches: dict[str, list[EvalItem]],
    *,
    out_dir: Path,
    model_label: str,
    servers: list[str],
    overwrite: bool = False,
    progress: bool = True,
    decoder: Decoder | None = None,
) -> dict[str, Any]:
    """Build the runner around a decoder (a local engine unless given / ``servers``) and run."""
    from evaluation.judging import Judge
    from evaluation.runner import EvalRunner, RunSettings

    settings = RunSettings(
        model=model_label,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        force_rethink=cfg.eval.force_rethink,
        trigger=cfg.algorithm.rethink.eval_trigger,
        prompt_suffix=cfg.data.prompt_suffix,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
        option_text_rule=cfg.eval.option_text_rule,
        precision_rule=cfg.eval.precision_rule,
        max_items=cfg.eval.max_items,
    )
    judge = Judge(
        option_text=cfg.eval.option_text_rule,
        precision=cfg.eval.precision_rule,
        timeout_s=cfg.eval.judge_timeout_s,
        workers=cfg.eval.judge_workers,
    )
    # Check the output folder before paying for the model.
    runner = EvalRunner(None, settings, judge=judge, out_dir=out_dir, overwrite=overwrite, progress=progress)  # type: ignore[arg-type]
    engine = None
    if decoder is None:
        decoder, engine = make_decoder(cfg, servers)
    runner.decoder = decoder
    try:
        if engine is not None:
            await engine.start()
        return await runner.run(benches)
    finally:
        await decoder.aclose()


def cmd_eval(args: argparse.Namespace) -> int:
    if getattr(args, "list", False):
        print_benchmarks()
        return 0
    from common.logging import configure_logging
    from evaluation.benchmarks import BenchmarkError
    from evaluation.report import pct
    from evaluation.runner import RunMismatchError
    from evaluation.store import ResultsFileError

    cfg = config_for(args)
    configure_logging(cfg.run.log_level)
    servers = list(args.server or []) or list(cfg.eval.servers)
    refs = bench_args(args.bench, cfg.eval.benchmarks)
    data_dir = args.data_dir or cfg.eval.data_dir
    model_label = args.model or ("server:" + ",".join(servers) if servers else cfg.model.path)
    out_dir = Path(args.out) if args.out else Path(cfg.eval.out_dir) / (
        model_slug(model_label) + ("-rethink" if cfg.eval.force_rethink else "")
    )
    try:
        benches = load_all(refs, data_dir, cfg.eval.max_items)
        print(
            "evaluating " + ", ".join(f"{k} ({len(v)} items)" for k, v in benches.items()) + f" -> {out_dir}",
            file=sys.stderr,
        )
        summary = asyncio.run(
            run_eval(
                cfg,
                benches,
                out_dir=out_dir,
                model_label=model_label,
                servers=servers,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        )
    except (BenchmarkError, RunMismatchError, ResultsFileError) as exc:
        raise UsageError(str(exc)) from None
    except ConnectionError as exc:
        raise UsageError(f"{exc} (finished items are saved in {out_dir}; run the same command again to resume)") from None
    except Exception as exc:
        from common.model_loading import ModelLoadError

        if isinstance(exc, ModelLoadError):
            raise UsageError(str(exc)) from None
        raise
    for name in benches:
        s = summary["benchmarks"][name]
        line = f"{name}: {pct(s['accuracy'])}% ({s['correct']}/{s['n']})"
        if "accuracy_rethink" in s:
            line += f", after rethinking {pct(s['accuracy_rethink'])}% ({s['correct_rethink']}/{s['n']})"
        print(line)
    print(f"report: {out_dir / 'summary.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.main eval ...`` / ``... chat ...`` (the same as ``rethinker eval`` / ``chat``)."""
    p = argparse.ArgumentParser(prog="python -m evaluation.main")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="evaluate a model on benchmarks")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)
    c = sub.add_parser("chat", help="ask a model one question")
    add_chat_arguments(c)
    c.set_defaults(func=cmd_chat)
    args = p.parse_args(argv)
    return run_command(args.func, args, prog="evaluation")


if __name__ == "__main__":
    raise SystemExit(main())
