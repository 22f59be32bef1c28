"""Fault-tolerance benchmark: recovery seconds per fault of a live `rethinker up`; prints ONE JSON line.

Runs ``rethinker.chaos.run_chaos`` on configs/tiny-cpu.yaml (own supervised Redis with AOF, two
rollout servers, 4 prompts per step, a checkpoint every 2 steps) and kills, one at a time, a rollout
server, the verifier, the buffer service, the learner (SIGKILL each) and the Redis server (SIGKILL,
the launcher restarts it from its AOF).  Per fault: ``restarted_s`` (fault -> the launcher started
the process again) and ``recovery_s`` (fault -> the learner finished a step after that restart).
Also: lost prompt tasks, duplicate groups, whether the published policy version ever went back,
stray processes after SIGTERM, wall time.

Usage: python benchmarks/chaos.py [--workdir DIR] [--steps-between 2]
Needs redis-server on PATH (the launcher starts its own on a free port).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--steps-between", type=int, default=2)
    args = ap.parse_args()
    from rethinker.chaos import run_chaos

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rethinker-chaos-"))
    rep = run_chaos(workdir, steps_between=args.steps_between)
    out = {
        "benchmark": "chaos",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg(),
        "recovery_s": {f.fault: None if f.recovery_s is None else round(f.recovery_s, 1) for f in rep.faults},
        "restarted_s": {f.fault: None if f.restarted_s is None else round(f.restarted_s, 1) for f in rep.faults},
        "rollout_held_tasks": next((f.held_tasks for f in rep.faults if f.fault == "rollout"), None),
        "learner_resumed_at": next((f.learner_resumed_at for f in rep.faults if f.fault == "learner"), None),
        "checkpoint_at_kill": next((f.checkpoint_before for f in rep.faults if f.fault == "learner"), None),
        "steps": len(rep.steps),
        "published_tasks": rep.published_tasks,
        "lost_tasks": rep.lost_tasks,
        "duplicate_groups": rep.duplicate_groups,
        "version_went_back": rep.version_went_back,
        "stray_processes": len(rep.stray_processes),
        "launcher_rc": rep.launcher_rc,
        "wall_s": round(rep.wall_s, 1),
        "error": rep.error[:500],
        "workdir": str(workdir),
    }
    print(json.dumps(out))
    return 0 if not rep.error else 1


if __name__ == "__main__":
    sys.exit(main())
