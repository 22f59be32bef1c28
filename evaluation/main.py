"""``rethinker eval``: the command-line entry of the benchmark runner.

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
from typing import Any

from common.config import RethinkerConfig, load_config
from common.logging import configure_logging

from evaluation.benchmarks import REGISTRY, BenchmarkError, EvalItem, load_benchmark, parse_bench
from evaluation.generation import Decoder, EngineDecoder
from evaluation.judging import Judge
from evaluation.report import pct
from evaluation.runner import EvalRunner, RunMismatchError, RunSettings
from evaluation.store import ResultsFileError


def _cli_error(msg: str) -> Exception:
    from rethinker.cli import CLIError

    return CLIError(msg)


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
    if servers:
        from evaluation.server_decoder import ServerDecoder

        return ServerDecoder(servers, cfg), None
    from services.rollout.engines import make_engine

    engine = make_engine(cfg)
    return EngineDecoder(engine, owns_engine=True), engine


def load_all(refs: list[str], data_dir: str | None, max_items: int | None) -> dict[str, list[EvalItem]]:
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
        raise _cli_error(str(exc)) from None
    except ConnectionError as exc:
        raise _cli_error(f"{exc} (finished items are saved in {out_dir}; run the same command again to resume)") from None
    except Exception as exc:
        from common.model_loading import ModelLoadError

        if isinstance(exc, ModelLoadError):
            raise _cli_error(str(exc)) from None
        raise
    for name in benches:
        s = summary["benchmarks"][name]
        line = f"{name}: {pct(s['accuracy'])}% ({s['correct']}/{s['n']})"
        if "accuracy_rethink" in s:
            line += f", after rethinking {pct(s['accuracy_rethink'])}% ({s['correct_rethink']}/{s['n']})"
        print(line)
    print(f"report: {out_dir / 'summary.md'}")
    return 0
