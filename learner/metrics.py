"""Per-step learner metrics: TensorBoard always, W&B when configured, a JSONL file, a rich progress bar.

``StepMetrics`` names the figures the learner reports every step (see docs/learner.md):
``loss``, ``pg_loss``, ``nll_loss``, ``kl_ref``, ``reward_mean``, ``effective_share``, ``clip_frac``,
``approx_kl`` (to the behaviour policy), ``approx_kl_sampler``, ``grad_norm``, ``lr``, ``tokens_per_s``,
``idle_share`` (time waiting for data / step wall time), ``idle_s``, ``sync_s``, ``staleness_mean``,
``staleness_max``, ``replay_share``.  Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

from common.config import config_dict
from common.logging import get_logger

log = get_logger("learner.metrics")

SCALARS = (
    "loss", "pg_loss", "nll_loss", "kl_ref", "reward_mean", "effective_share", "clip_frac", "cap_frac", "approx_kl",
    "approx_kl_sampler", "grad_norm", "lr", "tokens_per_s", "idle_share", "idle_s", "train_s", "sync_s",
    "staleness_mean", "staleness_max", "replay_share", "samples", "tokens", "sync_ok", "checkpoint_s",
)


class MetricsSink:
    def __init__(self, cfg: Any, *, enabled: bool = True, progress: bool = False, total_steps: int | None = None) -> None:
        self.enabled = enabled
        self.cfg = cfg
        self._tb = None
        self._wandb = None
        self._progress = None
        self._task = None
        self.last: dict[str, float] = {}
        if not enabled:
            return
        run_dir = Path(cfg.run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = run_dir / "learner_metrics.jsonl"
        tb_dir = cfg.learner.tensorboard_dir or str(run_dir / "tensorboard")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=tb_dir)
        except Exception as exc:  # noqa: BLE001 - tensorboard missing: keep training
            log.warning("tensorboard_unavailable", error=str(exc))
        if cfg.learner.wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=cfg.learner.wandb_project, name=cfg.run.name, config=config_dict(cfg))
            except Exception as exc:  # noqa: BLE001
                log.warning("wandb_unavailable", error=str(exc))
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]learn"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("learn", total=total_steps or cfg.learner.total_steps, info="")

    def log(self, step: int, values: Mapping[str, Any], *, prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        clean = {k: v for k, v in clean.items() if math.isfinite(v)}
        if prefix == "train":
            self.last = clean
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in clean.items()}, step=step)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "prefix": prefix, "time": time.time(), **clean}) + "\n")
        if self._progress is not None and prefix == "train":
            info = (
                f"loss {clean.get('loss', float('nan')):.4f} r {clean.get('reward_mean', float('nan')):.3f} "
                f"eff {clean.get('effective_share', float('nan')):.2f} idle {clean.get('idle_share', 0):.0%} "
                f"sync {clean.get('sync_s', 0):.2f}s"
            )
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception:  # noqa: BLE001
                pass
