"""A finished demo run, stage by stage; prints ONE JSON line.

Reads a run folder written by ``rethinker demo`` (``learner_metrics.jsonl``, ``summary.json``,
``config.yaml``) and splits the training steps at ``algorithm.rethink.start_version`` into stage 1
(GRPO + SSR) and stage 2 (Forced Rethinking on).  Per stage and for the whole run: ``steps``,
``idle_share`` (seconds the learner waited for data / its step seconds: long steps weigh more, as
in ``summary.json``), ``step_s`` and ``train_s`` (medians), ``replayed_share`` (replayed / trained
rows) and ``effective_share`` (mean of the steps' shares of stored responses with a non-zero
advantage).  From ``summary.json``: wall time, held-out accuracy (initial, final, first evaluation
at or above 0.9) and ``rollout_time_share`` (the rollout servers' wall time by activity).

Usage: python benchmarks/demo_stages.py [RUN_DIR]   (default: runs/tiny-cpu, what ``make demo`` writes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinker.launcher import learner_idle_share  # noqa: E402


def stage_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"steps": 0}
    idle = learner_idle_share(rows)
    trained = sum(r.get("samples", 0.0) for r in rows)
    return {
        "steps": len(rows),
        "idle_share": round(idle, 4) if idle is not None else None,
        "step_s": round(statistics.median(r["step_s"] for r in rows), 3),
        "train_s": round(statistics.median(r.get("train_s", 0.0) for r in rows), 3),
        "replayed_share": round(sum(r.get("replayed", 0.0) for r in rows) / trained, 4) if trained else None,
        "effective_share": round(statistics.fmean(r.get("effective_share", 0.0) for r in rows), 3),
    }


def analyse(run_dir: Path) -> dict[str, Any]:
    for name in ("learner_metrics.jsonl", "summary.json", "config.yaml"):
        if not (run_dir / name).is_file():
            raise SystemExit(f"error: RUN_DIR {run_dir}: no {name} (is it a finished `rethinker demo` run folder?)")
    rows = [json.loads(line) for line in (run_dir / "learner_metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("prefix") == "train" and "idle_s" in r and "step_s" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    rethink = (cfg.get("algorithm") or {}).get("rethink") or {}
    start = int(rethink.get("start_version", 0)) if rethink.get("enabled", True) else None
    # the step that trains version v's groups is step v + 1: stage 2 trains from step start + 1 on
    stage1 = [r for r in train if start is None or r["step"] <= start]
    stage2 = [r for r in train if start is not None and r["step"] > start]
    curve = summary.get("eval_curve") or []
    return {
        "benchmark": "demo_stages",
        "run_dir": str(run_dir),
        "wall_s": summary.get("wall_s"),
        "initial_accuracy": summary.get("initial_eval_accuracy"),
        "final_accuracy": summary.get("final_eval_accuracy"),
        "first_step_at_0_9": next((int(s) for s, a in curve if a >= 0.9), None),
        "stopped_early": summary.get("stopped_early"),
        "rethink_start_version": start,
        "run": stage_figures(train),
        "stage1": stage_figures(stage1),
        "stage2": stage_figures(stage2),
        "rollout_time_share": summary.get("rollout_time_share"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(REPO / "runs" / "tiny-cpu"))
    args = ap.parse_args(argv)
    print(json.dumps(analyse(Path(args.run_dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
