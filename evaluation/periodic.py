"""The learner's periodic evaluation: ``make_eval_fn(cfg, engine_or_model)`` -> ``eval_fn(step)``.

The learner calls ``eval_fn(step)`` every ``learner.eval_every`` steps and logs the returned flat
dict of numbers under its ``eval/`` prefix (``accuracy``, ``<bench>/accuracy``,
``<bench>/<category>/accuracy``, ``<bench>/truncated_frac``, ``seconds`` ...).  The CPU demo's held-out accuracy is this, on ``data.eval_path`` (the synthetic
``eval.parquet``) read as the ``virl`` benchmark.

What decodes:

- a rollout ``Engine`` (``services.rollout.engines``) -- e.g. an hf engine the learner keeps its
  current weights in (``await engine.load_weights(...)``) -- via ``EngineDecoder``;
- a transformers model object (the learner's own module, e.g. ``PolicyModel.module``; a wrapper with
  ``.module`` is unwrapped) plus its processor (loaded from ``model.path`` when not given), via
  ``ModelDecoder`` (batched ``model.generate``; eval mode during the call, the previous mode after);
- any object with the ``Decoder`` interface (evaluation.generation).

Settings: ``eval.periodic_benchmarks`` (empty: ``virl=<data.eval_path>``), at most
``eval.periodic_max_items`` items per benchmark (default ``data.eval_max_items``), greedy with
``eval.periodic_max_new_tokens`` (default ``algorithm.sampling.max_new_tokens``: the length the
policy is trained at), optional forced rethinking (``eval.periodic_force_rethink``).  The items are
loaded once; each call writes ``<out_dir>/step-<step>/`` (default ``<run.run_dir>/eval``), so an
eval interrupted by a learner restart resumes at the same step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import RethinkerConfig
from common.logging import get_logger

from evaluation.benchmarks import BenchmarkError, EvalItem, load_benchmark, parse_bench
from evaluation.generation import Decoder, EngineDecoder, ModelDecoder
from evaluation.judging import Judge
from evaluation.runner import EvalRunner, RunSettings

if TYPE_CHECKING:
    import torch

    from services.rollout.engines import Engine

log = get_logger("evaluation.periodic")


def _is_engine(obj: object) -> bool:
    return hasattr(obj, "encode_question") and hasattr(obj, "continue_from") and hasattr(obj, "generate")


def _is_decoder(obj: object) -> bool:
    return hasattr(obj, "decode") and asyncio.iscoroutinefunction(obj.decode) and hasattr(obj, "max_inflight")


def make_decoder_for(
    cfg: RethinkerConfig,
    engine_or_model: Engine | Decoder | torch.nn.Module,
    processor: Any = None,  # transformers ProcessorMixin, untyped
    *,
    max_batch: int | None = None,
) -> Decoder:
    """Wrap an engine, a model object or a decoder into a ``Decoder``."""
    if _is_decoder(engine_or_model):
        return engine_or_model
    if _is_engine(engine_or_model):
        return EngineDecoder(engine_or_model)
    model = engine_or_model
    inner = getattr(model, "module", None)
    if inner is not None and hasattr(inner, "generate"):
        model = inner  # a DeepSpeed / DDP wrapper
    if not hasattr(model, "generate"):
        raise TypeError(f"make_eval_fn needs an Engine, a Decoder or a model with .generate, got {type(engine_or_model).__name__}")
    if processor is None:
        from common.model_loading import load_processor_from_config

        processor = load_processor_from_config(cfg.model, cfg.data)
    return ModelDecoder(
        model,
        processor,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
        max_batch=max_batch or cfg.eval.batch_size,
    )


def periodic_bench_refs(cfg: RethinkerConfig) -> list[str]:
    if cfg.eval.periodic_benchmarks:
        return list(cfg.eval.periodic_benchmarks)
    if not cfg.data.eval_path:
        raise BenchmarkError("periodic eval: set data.eval_path or eval.periodic_benchmarks")
    return [f"virl={cfg.data.eval_path}"]


def flatten_summary(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``summary`` (runner.run's result) -> flat numbers for TensorBoard / the learner's log."""
    out: dict[str, float] = {}
    prefix = prefix.rstrip("/")
    pre = f"{prefix}/" if prefix else ""
    ov = summary.get("overall") or {}
    if ov.get("macro_accuracy") is not None:
        out[f"{pre}accuracy"] = float(ov["macro_accuracy"])
    if ov.get("macro_accuracy_rethink") is not None:
        out[f"{pre}accuracy_rethink"] = float(ov["macro_accuracy_rethink"])
    for name, s in (summary.get("benchmarks") or {}).items():
        b = f"{pre}{re.sub(r'[^A-Za-z0-9_.:-]+', '_', name)}"
        n = s.get("n") or 0
        out[f"{b}/n"] = float(n)
        if s.get("accuracy") is not None:
            out[f"{b}/accuracy"] = float(s["accuracy"])
        if s.get("accuracy_rethink") is not None:
            out[f"{b}/accuracy_rethink"] = float(s["accuracy_rethink"])
        if n:
            out[f"{b}/truncated_frac"] = s.get("truncated", 0) / n
            out[f"{b}/no_answer_frac"] = s.get("no_answer", 0) / n
        if s.get("mean_response_tokens") is not None:
            out[f"{b}/mean_response_tokens"] = float(s["mean_response_tokens"])
        for dim in ("category",):
            for label, c in ((s.get("categories") or {}).get(dim) or {}).items():
                if c.get("accuracy") is not None:
                    out[f"{b}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}/accuracy"] = float(c["accuracy"])
    return out


class EvalFn:
    """``eval_fn(step) -> dict``: one eval of the current weights (see the module docstring)."""

    def __init__(
        self,
        cfg: RethinkerConfig,
        decoder: Decoder,
        benches: dict[str, list[EvalItem]],
        *,
        out_dir: Path | None,
        max_new_tokens: int,
        force_rethink: bool,
        model_label: str = "learner",
        progress: bool = False,
    ) -> None:
        self.cfg = cfg
        self.decoder = decoder
        self.benches = benches
        self.out_dir = out_dir
        self.settings = RunSettings(
            model=model_label,
            max_new_tokens=max_new_tokens,
            batch_size=cfg.eval.batch_size,
            force_rethink=force_rethink,
            trigger=cfg.algorithm.rethink.eval_trigger,
            prompt_suffix=cfg.data.prompt_suffix,
            min_pixels=cfg.data.min_pixels,
            max_pixels=cfg.data.max_pixels,
            option_text_rule=cfg.eval.option_text_rule,
            precision_rule=cfg.eval.precision_rule,
        )
        self.judge = Judge(
            option_text=cfg.eval.option_text_rule,
            precision=cfg.eval.precision_rule,
            timeout_s=cfg.eval.judge_timeout_s,
            workers=cfg.eval.judge_workers,
        )
        self.progress = progress
        self.last_summary: dict[str, Any] | None = None

    async def arun(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        out = None if self.out_dir is None else self.out_dir / f"step-{int(step):06d}"
        runner = EvalRunner(
            self.decoder,
            self.settings,
            judge=self.judge,
            out_dir=out,
            overwrite=False,
            progress=self.progress,
        )
        summary = await runner.run(self.benches)
        self.last_summary = summary
        metrics = flatten_summary(summary)
        metrics["seconds"] = time.perf_counter() - t0
        log.info("periodic_eval", step=int(step), **{k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def __call__(self, step: int) -> dict[str, float]:
        """Synchronous call; safe from inside a running event loop (runs on a helper thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(step))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval") as ex:
            return ex.submit(asyncio.run, self.arun(step)).result()


def make_eval_fn(
    cfg: RethinkerConfig,
    engine_or_model: Engine | Decoder | torch.nn.Module,
    *,
    processor: Any = None,  # transformers ProcessorMixin, untyped
    benchmarks: list[str] | None = None,
    data_dir: str | None = None,
    max_items: int | None = None,
    max_new_tokens: int | None = None,
    force_rethink: bool | None = None,
    out_dir: str | Path | None = "default",
    progress: bool = False,
) -> EvalFn:
    """The learner's eval hook.  ``out_dir=None`` keeps results in memory only; ``"default"`` is
    ``<run.run_dir>/eval``.  Raises ``BenchmarkError`` at once for missing / bad eval data."""
    refs = benchmarks or periodic_bench_refs(cfg)
    limit = max_items if max_items is not None else (cfg.eval.periodic_max_items or cfg.data.eval_max_items)
    benches: dict[str, list[EvalItem]] = {}
    for r in refs:
        ref = parse_bench(r)
        items = load_benchmark(ref, data_dir or cfg.eval.data_dir, max_items=limit)
        if not items:
            raise BenchmarkError(f"periodic eval: {ref.key} has no items")
        benches[ref.key] = items
    decoder = make_decoder_for(cfg, engine_or_model, processor)
    if out_dir == "default":
        out_dir = Path(cfg.run.run_dir) / "eval"
    return EvalFn(
        cfg,
        decoder,
        benches,
        out_dir=Path(out_dir) if out_dir is not None else None,
        max_new_tokens=max_new_tokens or cfg.eval.periodic_max_new_tokens or cfg.algorithm.sampling.max_new_tokens,
        force_rethink=cfg.eval.periodic_force_rethink if force_rethink is None else force_rethink,
        progress=progress,
    )
