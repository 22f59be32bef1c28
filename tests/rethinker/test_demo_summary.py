"""The demo's summary.json figures from the learner's metrics and the rollout servers' last status."""

from __future__ import annotations

import json

from common.config import RethinkerConfig
from rethinker.demo import summarize
from rethinker.launcher import RunResult


def test_idle_share_is_weighted_by_step_time_and_the_rollout_split_is_summed(tmp_path):
    rows = [
        {"prefix": "train", "step": 1, "idle_s": 0.0, "step_s": 1.0, "idle_share": 0.0, "samples": 128.0, "replayed": 0.0},
        {"prefix": "train", "step": 2, "idle_s": 3.0, "step_s": 4.0, "idle_share": 0.75, "samples": 128.0, "replayed": 64.0},
        {"prefix": "eval", "step": 2, "accuracy": 0.5},
    ]
    (tmp_path / "learner_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = {
        "rollout-0": {"loaded_version": 2, "actor": {"seconds": {"claim": 1.0, "generate": 3.0}}},
        "rollout-1": {"loaded_version": 2, "actor": {"seconds": {"claim": 3.0, "generate": 1.0}}, "rethinking": {"triggered": 5, "kept": 2}},
    }
    result = RunResult(returncode=0, wall_s=5.0, rollout_status=status)
    out = summarize(RethinkerConfig(), tmp_path, initial=0.25, final=0.5, result=result, wall_s=9.0)
    assert out["learner_idle_share"] == 0.6  # 3 s of 5 s waiting, not the mean of 0.0 and 0.75
    assert out["rollout_time_share"] == {"claim": 0.5, "generate": 0.5}
    assert out["replayed_share"] == 0.25 and out["rethink_triggered"] == 5 and out["rethink_kept"] == 2
    assert out["steps"] == 2 and out["eval_curve"] == [(2, 0.5)] and out["rollout_versions"] == [2, 2]
