"""benchmarks/demo_stages.py: a demo run folder split at the rethinking start, idle weighted by step time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("demo_stages", REPO / "benchmarks" / "demo_stages.py")
ds = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ds)


def _row(step, idle, wall, replayed=0.0):
    return {"prefix": "train", "step": step, "idle_s": idle, "step_s": wall, "train_s": wall - idle,
            "samples": 10.0, "replayed": replayed, "effective_share": 0.5}


def test_stages_split_at_the_rethinking_start(tmp_path, capsys):
    rows = [_row(1, 0.0, 1.0), _row(2, 0.5, 1.0), _row(3, 3.0, 4.0, replayed=5.0), {"prefix": "eval", "step": 2, "accuracy": 0.9}]
    (tmp_path / "learner_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"rethink": {"enabled": True, "start_version": 2}}}))
    (tmp_path / "summary.json").write_text(json.dumps({"wall_s": 9.0, "eval_curve": [[1, 0.5], [2, 0.9]], "final_eval_accuracy": 0.9,
                                                       "rollout_time_share": {"generate": 1.0}}))
    assert ds.main([str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage1"]["steps"] == 2 and out["stage1"]["idle_share"] == 0.25  # 0.5 s of 2 s
    assert out["stage2"]["steps"] == 1 and out["stage2"]["idle_share"] == 0.75 and out["stage2"]["replayed_share"] == 0.5
    assert out["run"]["idle_share"] == round(3.5 / 6.0, 4)  # not the mean of the steps' shares
    assert out["first_step_at_0_9"] == 2 and out["rollout_time_share"] == {"generate": 1.0}


def test_a_folder_that_is_no_run_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no learner_metrics.jsonl"):
        ds.main([str(tmp_path)])
