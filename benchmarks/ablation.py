"""SSR ablation benchmark; prints ONE JSON line.

Runs `rethinker ablate` (rethinker/ablation.py: the real verifier, buffer, rollout servers and
learner as processes, a fixed budget of learner steps per run) for modes grpo, filter and ssr on the
task of ``configs/ablation-cpu.yaml`` and prints, per mode (mean over the seeds):

- ``steps_to_0.8``: first evaluated step whose held-out accuracy is >= 0.8 (null: never), with
  ``reached_0.8`` (seeds that got there / seeds);
- ``final_accuracy``: held-out accuracy at the last step;
- ``replayed_share``: replayed rows / trained rows over the run;
- ``effective_share_first`` / ``effective_share_last``: share of effective (A != 0) responses among
  new rollouts over the first / last tenth of the steps (the "vanishing advantages" curve);
- ``batch_fill_mean``: rows drawn / rows wanted, mean over steps;

plus ``ssr_minus_filter`` and ``ssr_minus_grpo`` (final accuracy differences) and the wall time.
The modes of a seed start from the same warmed-up model and alternate run by run.

``--quick``: one seed and 100 steps (a smoke run of a few minutes per mode); the full grid is
``--seeds 3`` with the config's step budget (docs/ablation.md).  ``--from DIR`` runs nothing and
reads a grid that ``rethinker ablate`` already ran (``DIR/ablation.json``), so the figures of a
long grid come out in this same line.

Usage: python benchmarks/ablation.py [--quick] [--seeds 3] [--steps N] [--out runs/bench-ablation]
       python benchmarks/ablation.py --from runs/ablation-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

MODES = ("grpo", "filter", "ssr")


def mode_figures(summary: dict, mode: str, rethink: str = "off") -> dict:
    f = summary.get(f"{mode}/rethink_{rethink}")
    if f is None:
        return {}
    return {
        "steps_to_0.8": f["steps_to_0.8"]["mean"],
        "reached_0.8": f["steps_to_0.8"]["reached"],
        "final_accuracy": f["final_accuracy"]["mean"],
        "final_accuracy_range": [f["final_accuracy"]["min"], f["final_accuracy"]["max"]],
        "replayed_share": f["replayed_share"]["mean"],
        "effective_share_first": f["effective_share_first"]["mean"],
        "effective_share_last": f["effective_share_last"]["mean"],
        "batch_fill_mean": f["batch_fill_mean"]["mean"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 100 steps")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--config", default=str(REPO / "configs" / "ablation-cpu.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-ablation"))
    ap.add_argument("--from", dest="from_dir", default=None, help="read DIR/ablation.json of a finished grid instead of running one")
    args = ap.parse_args(argv)
    if args.from_dir:
        path = Path(args.from_dir) / "ablation.json"
        if not path.is_file():
            print(f"ablation: --from: no {path} (run `rethinker ablate --out {args.from_dir}` first)", file=sys.stderr)
            return 2
        doc = json.loads(path.read_text())
        print(json.dumps(result_line(doc, quick=False, source=str(path))))
        return 0

    from common.config import load_config
    from rethinker.ablation import run_ablation

    seeds = [0] if args.quick else list(range(args.seeds))
    steps = args.steps or (100 if args.quick else None)
    overrides = [f"redis.url={os.environ['REDIS_URL']}"] if os.environ.get("REDIS_URL") else []
    cfg = load_config(args.config, overrides)
    doc = run_ablation(cfg, modes=MODES, seeds=seeds, rethinks=["off"], steps=steps, out=Path(args.out), progress=False)
    out = result_line(doc, quick=args.quick, source=args.out)
    print(json.dumps(out))
    return 0 if not out["failed_runs"] else 1


def result_line(doc: dict, *, quick: bool, source: str) -> dict:
    """The JSON line of a grid (``rethinker.ablation`` document): per-mode figures and differences.
    Seeds and ``runs_wall_s`` (the runs' own wall time, warm-ups not included) come from the
    stage-1 runs themselves, since a document can hold several grids (``--resume``)."""
    stage1 = [r for r in doc["runs"] if r["mode"] in MODES and r["rethink"] == "off"]
    per_mode = {m: mode_figures(doc["summary"], m) for m in MODES}
    acc = {m: per_mode[m].get("final_accuracy") for m in MODES}
    return {
        "benchmark": "ablation",
        "date": datetime.date.today().isoformat(),
        "source": source,
        "quick": quick,
        "seeds": sorted({r["seed"] for r in stage1}),
        "steps": doc["meta"]["steps"],
        "modes": per_mode,
        "ssr_minus_filter": None if None in (acc["ssr"], acc["filter"]) else round(acc["ssr"] - acc["filter"], 4),
        "ssr_minus_grpo": None if None in (acc["ssr"], acc["grpo"]) else round(acc["ssr"] - acc["grpo"], 4),
        "runs_wall_s": round(sum(r["wall_s"] for r in stage1), 1),
        "load_avg": os.getloadavg()[0],
        "failed_runs": [r["name"] for r in doc["runs"] if r["returncode"] != 0],
    }


if __name__ == "__main__":
    raise SystemExit(main())
