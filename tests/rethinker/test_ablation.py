"""`rethinker ablate`: the grid plan, each run's config, the figures read from learner metrics, the
per-combination summary and its table, the CLI's errors.  (The grid itself runs the whole system
for tens of minutes: an opt-in lane, see docs/ablation.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from rethinker.ablation import (
    RunSpec,
    _fmt,
    markdown_table,
    plan_runs,
    run_config,
    run_record,
    smooth,
    summarize,
    time_breakdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_plan_runs_seed_by_seed_with_the_modes_interleaved():
    specs = plan_runs(["grpo", "filter", "ssr"], [0, 1], ["off", "nll0"])
    assert [s.name for s in specs[:4]] == [
        "grpo-rethink_off-s0", "filter-rethink_off-s0", "ssr-rethink_off-s0", "grpo-rethink_nll0-s0"]
    assert len(specs) == 12 and [s.seed for s in specs] == [0] * 6 + [1] * 6
    with pytest.raises(ConfigError, match="modes from"):
        plan_runs(["ssr", "fiter"], [0], ["off"])
    with pytest.raises(ConfigError):
        plan_runs(["ssr"], [0], ["maybe"])


def test_each_run_differs_from_the_base_only_where_it_should(tmp_path):
    base = load_config(ROOT / "configs" / "ablation-cpu.yaml", [])
    cfg = run_config(base, RunSpec("filter", "nll0", 2), out=tmp_path, warm_model="/m/warm", steps=40)
    assert cfg.algorithm.ssr.mode == "filter" and cfg.algorithm.rethink.enabled and cfg.algorithm.grpo.nll_coef == 0.0
    assert cfg.run.seed == 2 and cfg.learner.total_steps == 40 and cfg.model.path == "/m/warm"
    assert cfg.run.run_dir == str(tmp_path / "filter-rethink_nll0-s2")
    assert cfg.redis.namespace == f"{base.redis.namespace}-filter-rethink_nll0-s2"
    assert cfg.learner.stop_after_empty_rounds == 20  # a solved run ends instead of asking for rounds forever
    off = run_config(base, RunSpec("ssr", "off", 0), out=tmp_path, warm_model="/m", steps=40)
    assert not off.algorithm.rethink.enabled and off.algorithm.grpo.nll_coef == base.algorithm.grpo.nll_coef
    on = run_config(base, RunSpec("ssr", "on", 0), out=tmp_path, warm_model="/m", steps=40)
    assert on.algorithm.rethink.enabled and on.algorithm.grpo.nll_coef == base.algorithm.grpo.nll_coef
    assert base.algorithm.ssr.mode == "ssr" and not base.algorithm.rethink.enabled  # the base is untouched


def _rows(accs, eff, replayed, samples=96.0):
    rows = []
    for i, (e, r) in enumerate(zip(eff, replayed), start=1):
        rows.append({"prefix": "train", "step": i, "effective_share": e, "replayed": r, "samples": samples,
                     "batch_fill": 1.0 if i % 2 else 0.5, "reward_mean": 0.5, "idle_share": 0.25, "idle_s": 0.5,
                     "train_s": 1.0, "sync_s": 0.1, "step_s": 2.0})
    for step, a in accs:
        rows.append({"prefix": "eval", "step": step, "accuracy": a, "seconds": 3.0})
    return rows


def test_run_record_reads_the_figures_off_the_metrics():
    rows = _rows([(5, 0.5), (10, 0.85), (15, 0.95), (20, 0.9)], eff=[1.0] * 10 + [0.2] * 10, replayed=[0.0] * 10 + [48.0] * 10)
    rec = run_record(RunSpec("ssr", "off", 1), rows, initial=0.25, wall_s=60.0, returncode=0)
    f = rec["figures"]
    assert rec["eval_curve"][0] == (0, 0.25) and rec["steps_done"] == 20
    assert f["steps_to_0.8"] == 10 and f["steps_to_0.9"] == 15 and f["final_accuracy"] == 0.9
    assert f["replayed_share"] == pytest.approx(480 / 1920)
    assert f["effective_share_first"] == 1.0 and f["effective_share_last"] == pytest.approx(0.2)
    assert f["batch_fill_mean"] == 0.75 and f["learner_idle_share"] == 0.25
    assert rec["replayed_share"][-1] == 0.5
    never = run_record(RunSpec("grpo", "off", 1), _rows([(10, 0.5)], [1.0], [0.0]), initial=0.25, wall_s=1, returncode=0)
    assert never["figures"]["steps_to_0.8"] is None
    t = time_breakdown(rows, wall_s=60.0)
    assert (t["train_s"], t["idle_s"], t["sync_s"], t["eval_s"]) == (20.0, 10.0, 2.0, 12.0)
    assert t["other_s"] == 16.0 and t["step_s_mean"] == 2.0


def test_summary_over_seeds_and_its_table():
    def rec(mode, seed, accs):
        return run_record(RunSpec(mode, "off", seed), _rows(accs, [0.9] * 4, [0.0] * 4), initial=0.25, wall_s=1, returncode=0)

    runs = [rec("ssr", 0, [(2, 0.85), (4, 0.9)]), rec("ssr", 1, [(2, 0.6), (4, 0.7)]), rec("grpo", 0, [(2, 0.5), (4, 0.6)])]
    s = summarize(runs)
    assert list(s) == ["ssr/rethink_off", "grpo/rethink_off"]
    ssr = s["ssr/rethink_off"]
    assert ssr["seeds"] == [0, 1] and ssr["final_accuracy"]["mean"] == pytest.approx(0.8)
    assert (ssr["final_accuracy"]["min"], ssr["final_accuracy"]["max"]) == (0.7, 0.9)
    assert ssr["steps_to_0.8"] == {"mean": 2, "min": 2, "max": 2, "reached": "1/2"}
    assert s["grpo/rethink_off"]["steps_to_0.8"]["mean"] is None
    table = markdown_table(s)
    assert "| ssr/rethink_off | 2, 1/2 |" in table and "| grpo/rethink_off | never (0/1) |" in table
    json.dumps(s)  # the summary goes into ablation.json as it is
    assert smooth([0, 1, 2, 3], 2) == [0, 0.5, 1.5, 2.5]


def test_cli_refuses_unknown_modes_before_running_anything(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rethinker.cli", "ablate", "-c", "configs/ablation-cpu.yaml", "--modes", "ssr,bogus",
         "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "bogus" in r.stderr and "modes from" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_signal_stops_the_grid_and_the_cut_short_run_is_not_recorded(tmp_path, monkeypatch):
    """SIGTERM/SIGINT during a run (the launcher reports ``stopped_by``) ends the whole grid: the
    runs finished before stay in ablation.json, the interrupted one is left for ``--resume``.  The
    system launcher is replaced here: the loop of the grid is what is tested."""
    import rethinker.ablation as ablation
    import rethinker.demo as demo
    import rethinker.launcher as launcher
    import rethinker.local_redis as local_redis
    import devtools.tiny_model as tiny_model
    from rethinker.launcher import RunResult

    cfg = load_config(ROOT / "configs" / "ablation-cpu.yaml")
    started: list[str] = []
    metrics = [{"prefix": "train", "step": s, "samples": 96.0, "replayed": 0.0, "effective_share": 0.9} for s in (1, 2)]

    def fake_run_system(rcfg):
        started.append(Path(rcfg.run.run_dir).name)
        return RunResult(returncode=0, wall_s=1.0, stopped_by="SIGTERM" if len(started) == 2 else None)

    monkeypatch.setattr(launcher, "run_system", fake_run_system)
    monkeypatch.setattr(launcher, "read_learner_metrics", lambda _d: metrics)
    monkeypatch.setattr(demo, "prepare_data", lambda _c: None)
    monkeypatch.setattr(demo, "reset_namespace", lambda _c: None)
    monkeypatch.setattr(tiny_model, "ensure_model", lambda _m: None)
    monkeypatch.setattr(local_redis, "ensure_redis", lambda url: url)
    monkeypatch.setattr(ablation, "_warm_model", lambda *a, **k: ("warm-model", 0.25))

    doc = ablation.run_ablation(cfg, modes=["grpo", "filter", "ssr"], seeds=[0], rethinks=["off"],
                                out=tmp_path, progress=False)
    assert started == ["grpo-rethink_off-s0", "filter-rethink_off-s0"]  # ssr never started
    assert doc["stopped_by"] == "SIGTERM"
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["grpo-rethink_off-s0"]


def test_progress_figures_of_a_run_without_training_steps():
    assert _fmt(None, 2) == "-" and _fmt(0.5, 3) == "0.500"


def test_benchmark_line_from_a_finished_grid(tmp_path):
    """`benchmarks/ablation.py --from DIR` prints the JSON line of a grid `rethinker ablate` ran."""
    def rec(mode, seed, accs):
        return run_record(RunSpec(mode, "off", seed), _rows(accs, [0.9] * 4, [0.0] * 4), initial=0.25, wall_s=1, returncode=0)

    runs = [rec(m, s, [(2, 0.5 + 0.1 * i + 0.05 * s), (4, 0.7 + 0.1 * i)]) for s in (0, 1) for i, m in enumerate(("grpo", "filter", "ssr"))]
    doc = {"meta": {"steps": 4, "seeds": [0], "wall_s": 12.0}, "summary": summarize(runs), "runs": runs}  # meta of a later grid
    (tmp_path / "ablation.json").write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--from", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert line["seeds"] == [0, 1] and line["steps"] == 4 and line["failed_runs"] == []
    assert line["runs_wall_s"] == 6.0  # six runs of 1 s
    assert line["modes"]["ssr"]["final_accuracy"] == pytest.approx(0.9)
    assert line["modes"]["grpo"]["steps_to_0.8"] is None and line["modes"]["ssr"]["reached_0.8"] == "2/2"
    assert line["ssr_minus_grpo"] == pytest.approx(0.2)
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--from", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no " in missing.stderr and "ablation.json" in missing.stderr
