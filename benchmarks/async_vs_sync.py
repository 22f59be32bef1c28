"""Asynchronous actor-learner pipeline vs the synchronous on-policy baseline; prints ONE JSON line.

The same demo task (``configs/tiny-cpu.yaml``: tiny Qwen2.5-VL, synthetic ``dominant_color``), the
same format warm-up (done once), the same step count and the same seed in both modes; only
``learner.sync_mode`` differs:

- ``async``: rollout servers generate ahead with weights up to ``algorithm.ssr.staleness_bound``
  versions old while the learner trains;
- ``sync``: a round of prompts is published only after the learner trained the previous one, and
  it is generated with the newest weights (staleness bound 0).

The modes run one after the other, alternated over repeats (async first in even repeats, sync first
in odd ones).  Per mode: ``step_s`` (median learner step wall time, the first 5 steps excluded),
``wall_s`` (whole training phase), ``learner_idle_share`` (seconds waiting for data / step
seconds), ``tokens_per_s`` (tokens the rollout servers generated per second of training),
``final_accuracy`` (greedy held-out accuracy of the last checkpoint).  Ratios: ``speedup_per_step``
= sync step_s / async step_s (target >= 1.3) and ``accuracy_delta`` = async - sync.

Both modes run exactly ``--steps`` steps (``learner.stop_after_empty_rounds`` is 0).  The default
120 steps stay in stage 1; a run into stage 2 can reach the solved end state, where every group is
all-correct and, once the replay pool is spent, nothing is drawable: the learner then asks for
round after round without a step, for as long as it runs.  For longer runs pass
``--set learner.stop_after_empty_rounds=10`` (step counts may then differ; ``step_s`` stays a
median).  SIGINT / SIGTERM stop the whole benchmark (exit 130 / 143) without a line.

Usage: python benchmarks/async_vs_sync.py [--steps 120] [--repeats 1] [--out runs/bench-async-sync]
       [--set key=value ...]   (config overrides applied to both modes)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

MODES = ("async", "sync")
TARGET_SPEEDUP = 1.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--steps", type=int, default=120, help="learner steps per mode")
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode (order alternated)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-async-sync"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.steps < 6:
        ap.error(f"--steps must be >= 6 (the first 5 steps are excluded from step_s), got {args.steps}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def mode_order(repeats: int) -> list[str]:
    """async, sync, then sync, async, ...: each side runs first as often as the other."""
    out: list[str] = []
    for r in range(repeats):
        out += list(MODES if r % 2 == 0 else reversed(MODES))
    return out


def run_figures(rows: list[dict[str, Any]], rollout_status: dict[str, dict[str, Any]], final: float | None) -> dict[str, Any]:
    """One mode run's figures from its learner metrics and the rollout servers' last status."""
    from rethinker.launcher import learner_idle_share

    train = [r for r in rows if r.get("prefix") == "train"]
    steps = [float(r["step_s"]) for r in train if "step_s" in r]
    wall = sum(steps)
    idle = learner_idle_share(train)
    tokens = sum(int(s.get("tokens_generated", 0) or 0) for s in rollout_status.values())
    return {
        "steps": int(train[-1]["step"]) if train else 0,
        "step_s": round(statistics.median(steps[5:] or steps), 4) if steps else None,
        "wall_s": round(wall, 1),
        "learner_idle_share": round(idle, 4) if idle is not None else None,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "final_accuracy": final,
    }


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(mode: str, key: str) -> float | None:
        vals = [r[key] for r in runs[mode] if r.get(key) is not None]
        return round(statistics.median(vals), 4) if vals else None

    out: dict[str, Any] = {m: {k: med(m, k) for k in ("step_s", "wall_s", "learner_idle_share", "tokens_per_s", "final_accuracy")}
                           for m in MODES if runs.get(m)}
    a, s = out.get("async", {}), out.get("sync", {})
    out["speedup_per_step"] = round(s["step_s"] / a["step_s"], 3) if a.get("step_s") and s.get("step_s") else None
    out["accuracy_delta"] = (round(a["final_accuracy"] - s["final_accuracy"], 4)
                             if a.get("final_accuracy") is not None and s.get("final_accuracy") is not None else None)
    out["target_speedup"] = TARGET_SPEEDUP
    out["meets_target"] = bool(out["speedup_per_step"] is not None and out["speedup_per_step"] >= TARGET_SPEEDUP
                               and (out["accuracy_delta"] or 0.0) >= 0.0)
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from common.config import load_config
    from devtools.tiny_model import ensure_model
    from rethinker.demo import evaluate_model, latest_export, prepare_data, reset_namespace, warm_up
    from rethinker.launcher import read_learner_metrics, run_system
    from rethinker.local_redis import ensure_redis

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, [
        f"run.run_dir={out / 'warm'}",
        f"data.train_path={out / 'data' / 'train.parquet'}",
        f"data.eval_path={out / 'data' / 'eval.parquet'}",
        f"learner.total_steps={args.steps}",
        "learner.eval_every=0",
        "learner.stop_after_empty_rounds=0",  # both modes run exactly --steps steps
        *args.overrides,
    ])
    t0 = time.monotonic()
    prepare_data(base)
    ensure_model(base.model)
    warm = warm_up(base, out / "warm")
    initial = evaluate_model(warm, warm.model.path, out / "warm" / "eval-initial")["accuracy"]
    redis_url = ensure_redis(warm.redis.url)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for k, mode in enumerate(mode_order(args.repeats)):
        run_dir = out / f"{k:02d}-{mode}"
        cfg = warm.model_copy(deep=True)
        cfg.run.run_dir = str(run_dir)
        cfg.learner.checkpoint_dir = str(run_dir / "ckpt")
        cfg.learner.sync_mode = mode  # type: ignore[assignment]
        cfg.redis.url = redis_url
        cfg.redis.namespace = f"{warm.redis.namespace}-avs-{k}"
        reset_namespace(cfg)
        result = run_system(cfg)
        if result.stopped_by is not None:  # asked to stop: no further runs, no line from a cut-short run
            print(json.dumps({"error": f"stopped by {result.stopped_by} during the {mode} run {k}; nothing recorded"}))
            return 130 if result.stopped_by == "SIGINT" else 143
        if result.returncode != 0:
            print(json.dumps({"error": f"{mode} run {k} exited with {result.returncode}; see {run_dir / 'logs'}"}))
            return 1
        final_model = latest_export(cfg)
        final = evaluate_model(cfg, final_model, run_dir / "eval-final")["accuracy"] if final_model else None
        runs[mode].append(run_figures(read_learner_metrics(run_dir), result.rollout_status, final) | {"order": k})
        reset_namespace(cfg)
    line = {
        "benchmark": "async_vs_sync",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "steps": args.steps,
        "initial_accuracy": initial,
        **summarize(runs),
        "total_wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
