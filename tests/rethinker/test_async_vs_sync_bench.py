"""benchmarks/async_vs_sync.py: argument checks, the alternated mode order and the figures it derives
from a run's learner metrics (the runs themselves are the opt-in `make bench-async-sync` lane)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("async_vs_sync", ROOT / "benchmarks" / "async_vs_sync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_arguments_are_checked(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "3"])
    assert "--steps must be >= 6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])
    assert bench.parse_args(["--steps", "40", "--set", "learner.prompts_per_step=8"]).overrides == ["learner.prompts_per_step=8"]


def test_modes_alternate_which_runs_first(bench):
    assert bench.mode_order(1) == ["async", "sync"]
    assert bench.mode_order(3) == ["async", "sync", "sync", "async", "async", "sync"]


def test_figures_and_ratios(bench):
    def rows(step_s: float, idle_s: float) -> list[dict]:
        return [{"prefix": "train", "step": i + 1, "step_s": step_s if i >= 5 else 10.0, "idle_s": idle_s} for i in range(10)] + [
            {"prefix": "eval", "step": 10, "accuracy": 0.5}]

    status = {"rollout-0": {"tokens_generated": 3000}, "rollout-1": {"tokens_generated": 1000}}
    a = bench.run_figures(rows(1.0, 0.1), status, 0.8)
    s = bench.run_figures(rows(2.0, 1.0), status, 0.75)
    assert a["steps"] == 10 and a["step_s"] == 1.0  # the 5 slow first steps are excluded
    assert a["wall_s"] == 55.0 and a["learner_idle_share"] == round(1.0 / 55.0, 4)
    assert a["tokens_per_s"] == round(4000 / 55.0, 1)
    out = bench.summarize({"async": [a], "sync": [s]})
    assert out["speedup_per_step"] == 2.0 and out["accuracy_delta"] == 0.05 and out["meets_target"] is True
    worse = bench.summarize({"async": [a | {"final_accuracy": 0.7}], "sync": [s]})
    assert worse["meets_target"] is False  # faster but less accurate does not meet the target


def test_a_stop_signal_ends_the_whole_benchmark(bench, monkeypatch, tmp_path, capsys):
    """SIGTERM during the first mode's run: the other mode is not started and no figures are printed."""
    import json

    import devtools.tiny_model
    import rethinker.demo
    import rethinker.launcher
    import rethinker.local_redis

    started: list[str] = []

    def run_system(cfg):
        started.append(cfg.learner.sync_mode)
        return rethinker.launcher.RunResult(returncode=143, wall_s=1.0, stopped_by="SIGTERM")

    monkeypatch.setattr(rethinker.demo, "prepare_data", lambda cfg: None)
    monkeypatch.setattr(rethinker.demo, "warm_up", lambda cfg, out: cfg)
    monkeypatch.setattr(rethinker.demo, "evaluate_model", lambda cfg, path, out: {"accuracy": 0.25})
    monkeypatch.setattr(rethinker.demo, "reset_namespace", lambda cfg: 0)
    monkeypatch.setattr(devtools.tiny_model, "ensure_model", lambda model_cfg: model_cfg.path)
    monkeypatch.setattr(rethinker.local_redis, "ensure_redis", lambda url: url)
    monkeypatch.setattr(rethinker.launcher, "run_system", run_system)
    assert bench.main(["--steps", "6", "--repeats", "2", "--out", str(tmp_path)]) == 143
    assert started == ["async"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "error": "stopped by SIGTERM during the async run 0; nothing recorded"}
