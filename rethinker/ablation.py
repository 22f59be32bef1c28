"""The SSR ablation (`rethinker ablate`): GRPO vs filter vs SSR, with and without Forced Rethinking,
through the real system, over several seeds.

Every run is a whole `rethinker up` (verifier, buffer, rollout servers, learner as processes, the
same code as any training run) with a fixed budget of learner steps and the learner's periodic
held-out evaluation.  Per seed the format warm-up runs once and every mode starts from that same
warmed model, so the modes of a seed differ only in how batches are drawn (`algorithm.ssr.mode`)
and whether rethinking is on.  Runs of one seed are interleaved by mode, so drifting machine load
touches every mode alike.

Rethinking variants (`--rethink`): ``off`` (stage 1 only), ``on`` (Forced Rethinking from
`algorithm.rethink.start_version`, with its NLL term), ``nll0`` (rethinking on, `nll_coef: 0`: the
policy gradient alone, to separate it from the supervised term).

Outputs under ``<out>``: ``<run>/`` (each run's logs, metrics, checkpoints), ``ablation.json``
(every run's curves and the per-combination summary; rewritten after each run; with ``--resume``
the runs already in it are kept and not run again, so a second grid adds to the first), and three PNG curves (held-out accuracy, effective-response share
and replayed share of the trained rows, each vs learner step, mean over seeds with the seeds' range).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from common.cli_args import add_config_args, config_from_args
from common.config import ConfigError, RethinkerConfig
from common.logging import get_logger

log = get_logger("ablation")

MODES = ("grpo", "filter", "ssr")
RETHINK_VARIANTS = ("off", "on", "nll0")
THRESHOLDS = (0.8, 0.9)
CONVERGED_AFTER_EMPTY_ROUNDS = 20


@dataclass(frozen=True)
class RunSpec:
    mode: str
    rethink: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}-rethink_{self.rethink}-s{self.seed}"

    @property
    def combo(self) -> str:
        return f"{self.mode}/rethink_{self.rethink}"


def plan_runs(modes: Sequence[str], seeds: Sequence[int], rethinks: Sequence[str]) -> list[RunSpec]:
    """Every combination, seed by seed (a seed's warm model serves all its runs), modes interleaved."""
    bad = [m for m in modes if m not in MODES] + [r for r in rethinks if r not in RETHINK_VARIANTS]
    if bad or not modes or not seeds or not rethinks:
        raise ConfigError(f"ablate: unknown or empty choices {bad}; modes from {MODES}, rethink from {RETHINK_VARIANTS}")
    return [RunSpec(m, r, s) for s in seeds for r in rethinks for m in modes]


def run_config(base: RethinkerConfig, spec: RunSpec, *, out: Path, warm_model: str, steps: int) -> RethinkerConfig:
    """The config of one run: the base config with this run's mode, rethinking, seed and folders."""
    cfg = base.model_copy(deep=True)
    run_dir = out / spec.name
    cfg.run.seed = spec.seed
    cfg.run.run_dir = str(run_dir)
    cfg.learner.checkpoint_dir = str(run_dir / "checkpoints")
    cfg.learner.total_steps = steps
    # A fixed budget of steps for every run, except that a solved task can leave nothing to train
    # on: once every group is all-right and the replay pool is used up (reuse cap), no step can be
    # drawn and the learner would ask for new rounds forever.  After this many rounds in a row
    # without one effective response the run ends as converged (``steps_done`` < ``steps``).
    cfg.learner.stop_after_empty_rounds = CONVERGED_AFTER_EMPTY_ROUNDS
    cfg.redis.namespace = f"{base.redis.namespace}-{spec.name}"
    cfg.model.path = warm_model
    cfg.model.build_tiny_if_missing = False
    cfg.algorithm.ssr.mode = spec.mode  # type: ignore[assignment]
    cfg.algorithm.rethink.enabled = spec.rethink != "off"
    if spec.rethink == "nll0":
        cfg.algorithm.grpo.nll_coef = 0.0
    return cfg


def _fmt(x: float | None, digits: int) -> str:
    """A figure for the progress line; a run without training steps has none ("-")."""
    return "-" if x is None else f"{x:.{digits}f}"


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def run_record(spec: RunSpec, rows: list[dict[str, Any]], *, initial: float, wall_s: float, returncode: int) -> dict[str, Any]:
    """One run's curves and figures from its learner metrics rows."""
    train = [r for r in rows if r.get("prefix") == "train"]
    evals = [(0, initial)] + [(int(r["step"]), float(r["accuracy"])) for r in rows if r.get("prefix") == "eval" and "accuracy" in r]
    replayed = sum(r.get("replayed", 0.0) for r in train)
    trained = sum(r.get("samples", 0.0) for r in train)
    tenth = max(1, len(train) // 10)
    eff = [float(r.get("effective_share", 0.0)) for r in train]
    return {
        **asdict(spec),
        "name": spec.name,
        "combo": spec.combo,
        "returncode": returncode,
        "wall_s": round(wall_s, 1),
        "steps_done": int(train[-1]["step"]) if train else 0,
        "eval_curve": evals,
        "steps": [int(r["step"]) for r in train],
        "effective_share": eff,
        "replayed_share": [float(r.get("replayed", 0.0)) / max(float(r.get("samples", 0.0)), 1.0) for r in train],
        "batch_fill": [float(r.get("batch_fill", 1.0)) for r in train],
        "reward_mean": [float(r.get("reward_mean", 0.0)) for r in train],
        "replayed_samples": int(replayed),
        "trained_samples": int(trained),
        "time": time_breakdown(rows, wall_s),
        "figures": {
            **{f"steps_to_{t}": next((s for s, a in evals if a >= t), None) for t in THRESHOLDS},
            "final_accuracy": evals[-1][1],
            "replayed_share": replayed / trained if trained else 0.0,
            "effective_share_first": _mean(eff[:tenth]),
            "effective_share_last": _mean(eff[-tenth:]),
            "batch_fill_mean": _mean([float(r.get("batch_fill", 1.0)) for r in train]),
            "learner_idle_share": _mean([float(r["idle_share"]) for r in train if "idle_share" in r]),
        },
    }


def time_breakdown(rows: list[dict[str, Any]], wall_s: float) -> dict[str, float]:
    """Where a run's wall time went, from its learner metrics: training, waiting for rollouts
    (idle), weight sync, periodic eval, and the rest (process start-up, first sync, shutdown)."""
    train = [r for r in rows if r.get("prefix") == "train"]
    evals = [r for r in rows if r.get("prefix") == "eval"]
    parts = {
        "train_s": sum(float(r.get("train_s", 0.0)) for r in train),
        "idle_s": sum(float(r.get("idle_s", 0.0)) for r in train),
        "sync_s": sum(float(r.get("sync_s", 0.0)) for r in train),
        "eval_s": sum(float(r.get("seconds", 0.0)) for r in evals),
        "checkpoint_s": sum(float(r.get("checkpoint_s", 0.0)) for r in train),
    }
    parts["other_s"] = max(0.0, wall_s - sum(parts.values()))
    parts["step_s_mean"] = sum(float(r.get("step_s", 0.0)) for r in train) / max(len(train), 1)
    return {k: round(v, 2) for k, v in parts.items()}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per combination (mode / rethink variant): each figure's mean over seeds and its spread
    (min, max); the steps-to-threshold figures over the seeds that reached it, with that count."""
    out: dict[str, dict[str, Any]] = {}
    for combo in dict.fromkeys(r["combo"] for r in runs):
        mine = [r for r in runs if r["combo"] == combo]
        figs: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key in mine[0]["figures"]:
            vals = [r["figures"][key] for r in mine if r["figures"][key] is not None]
            entry: dict[str, Any] = {"mean": _mean(vals), "min": min(vals) if vals else None, "max": max(vals) if vals else None}
            if key.startswith("steps_to_"):
                entry["reached"] = f"{len(vals)}/{len(mine)}"
            if len(vals) > 1:
                entry["std"] = statistics.stdev(vals)
            figs[key] = entry
        out[combo] = figs
    return out


def _band(runs: Sequence[dict[str, Any]], xkey: str, ykey: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean, min and max over runs of ``ykey`` at the x values every run has."""
    series = []
    for r in runs:
        if xkey == "eval_curve":
            series.append({x: y for x, y in r["eval_curve"]})
        else:
            series.append(dict(zip(r[xkey], r[ykey])))
    xs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    ys = [[s[x] for s in series] for x in xs]
    return xs, [sum(v) / len(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def smooth(ys: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (per-step shares are noisy)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot(runs: Sequence[dict[str, Any]], out: Path, *, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "held-out accuracy (greedy)", "eval_curve", None),
        ("effective_share", "share of effective responses (A != 0) among new rollouts", "steps", "effective_share"),
        ("replayed_share", "replayed share of the trained rows", "steps", "replayed_share"),
    ]
    paths = []
    combos = list(dict.fromkeys(r["combo"] for r in runs))
    for key, ylabel, xkey, ykey in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        for combo in combos:
            xs, mean, lo, hi = _band([r for r in runs if r["combo"] == combo], xkey, ykey or "")
            if not xs:
                continue
            if ykey:
                mean, lo, hi = smooth(mean, 10), smooth(lo, 10), smooth(hi, 10)
            (line,) = ax.plot(xs, mean, lw=1.8, marker="o" if xkey == "eval_curve" else None, ms=3, label=combo)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel("learner step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        if key == "accuracy":
            ax.axhline(0.25, ls="--", color="grey", lw=1)
        ax.set_title(f"{title}: {key.replace('_', ' ')} (mean over seeds, band: range)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"ablation-{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    def cell(e: dict[str, Any], digits: int = 2) -> str:
        if e["mean"] is None:
            return f"never ({e.get('reached', '')})" if "reached" in e else "-"
        s = f"{e['mean']:.{digits}f}"
        if e["max"] != e["min"]:
            s += f" ({e['min']:.{digits}f}-{e['max']:.{digits}f})"
        if "reached" in e:
            s += f", {e['reached']}"
        return s

    head = "| mode / rethinking | steps to 0.8 | steps to 0.9 | final accuracy | effective share first -> last | replayed share | batch fill |"
    lines = [head, "|" + "---|" * 7]
    for combo, f in summary.items():
        lines.append(
            f"| {combo} | {cell(f['steps_to_0.8'], 0)} | {cell(f['steps_to_0.9'], 0)} | {cell(f['final_accuracy'])} | "
            f"{cell(f['effective_share_first'])} -> {cell(f['effective_share_last'])} | {cell(f['replayed_share'], 3)} | "
            f"{cell(f['batch_fill_mean'])} |"
        )
    return "\n".join(lines)


def run_ablation(
    cfg: RethinkerConfig,
    *,
    modes: Sequence[str],
    seeds: Sequence[int],
    rethinks: Sequence[str],
    steps: int | None = None,
    out: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the grid; returns (and writes to ``<out>/ablation.json``) every run and the summary."""
    from devtools.tiny_model import ensure_model
    from rethinker.demo import evaluate_model, prepare_data, reset_namespace, warm_up
    from rethinker.launcher import read_learner_metrics, run_system
    from rethinker.local_redis import ensure_redis

    steps = steps or cfg.learner.total_steps
    out = Path(out or cfg.run.run_dir)
    specs = plan_runs(modes, seeds, rethinks)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "ablation.json"
    done: dict[str, dict[str, Any]] = {}
    if resume and result_path.exists():
        done = {r["name"]: r for r in json.loads(result_path.read_text())["runs"]}
    prepare_data(cfg)
    ensure_model(cfg.model)
    cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": ensure_redis(cfg.redis.url)})})
    t_start = time.monotonic()
    warm: dict[int, tuple[str, float]] = {}
    wanted = {spec.name for spec in specs}
    runs: list[dict[str, Any]] = [r for name, r in done.items() if name not in wanted]  # other grids' runs stay
    meta = {"steps": steps, "modes": list(modes), "seeds": list(seeds), "rethink": list(rethinks),
            "config": cfg.run.name, "train_fraction": cfg.algorithm.ssr.train_fraction,
            "prompts_per_step": cfg.learner.prompts_per_step, "n": cfg.algorithm.sampling.n,
            "rethink_start_version": cfg.algorithm.rethink.start_version, "eval_every": cfg.learner.eval_every,
            "eval_items": cfg.data.eval_max_items}
    for i, spec in enumerate(specs):
        if spec.name in done:
            runs.append(done[spec.name])
            continue
        if spec.seed not in warm:
            warm[spec.seed] = _warm_model(cfg, spec.seed, out / f"warm-s{spec.seed}", reuse=resume,
                                          warm_up=warm_up, evaluate_model=evaluate_model)
        warm_path, initial = warm[spec.seed]
        rcfg = run_config(cfg, spec, out=out, warm_model=warm_path, steps=steps)
        if Path(rcfg.run.run_dir).exists():
            shutil.rmtree(rcfg.run.run_dir)
        reset_namespace(rcfg)
        t0 = time.monotonic()
        result = run_system(rcfg)
        if result.stopped_by is not None:  # the grid was asked to stop: the cut-short run is not recorded
            reset_namespace(rcfg)
            print(f"ablate: stopped by {result.stopped_by} during {spec.name}; {len(runs)} runs recorded in "
                  f"{result_path} (run again with --resume to go on)", file=sys.stderr)
            doc = _write(result_path, meta, runs, time.monotonic() - t_start)
            doc["stopped_by"] = result.stopped_by
            return doc
        rec = run_record(spec, read_learner_metrics(Path(rcfg.run.run_dir)), initial=initial,
                         wall_s=time.monotonic() - t0, returncode=result.returncode)
        reset_namespace(rcfg)
        runs.append(rec)
        if progress:
            f = rec["figures"]
            print(f"[{i + 1}/{len(specs)}] {spec.name}: final accuracy {_fmt(f['final_accuracy'], 3)}, "
                  f"steps to 0.8 {f['steps_to_0.8']}, replayed share {_fmt(f['replayed_share'], 3)}, "
                  f"effective {_fmt(f['effective_share_first'], 2)} -> {_fmt(f['effective_share_last'], 2)}, "
                  f"{rec['wall_s']:.0f} s (total {time.monotonic() - t_start:.0f} s)", flush=True)
        if result.returncode != 0:
            print(f"ablate: run {spec.name} failed (exit {result.returncode}); see {rcfg.run.run_dir}/logs", file=sys.stderr)
        _write(result_path, meta, runs, time.monotonic() - t_start)
    doc = _write(result_path, meta, runs, time.monotonic() - t_start)
    if runs:
        doc["plots"] = [str(p) for p in plot(runs, out, title=cfg.run.name)]
    return doc


def _warm_model(cfg: RethinkerConfig, seed: int, seed_dir: Path, *, reuse: bool, warm_up: Any, evaluate_model: Any) -> tuple[str, float]:
    """The seed's warmed-up model and its held-out accuracy (``initial.json``); with ``reuse`` a
    complete earlier warm-up of the same seed is taken as it is (the warm-up is seeded)."""
    done = seed_dir / "initial.json"
    if reuse and done.exists():
        rec = json.loads(done.read_text())
        return str(rec["model"]), float(rec["accuracy"])
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    seeded = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})})
    wcfg = warm_up(seeded, seed_dir)
    initial = float(evaluate_model(wcfg, wcfg.model.path, seed_dir / "eval-initial")["accuracy"])
    done.write_text(json.dumps({"model": wcfg.model.path, "accuracy": initial}))
    return wcfg.model.path, initial


def _write(path: Path, meta: dict[str, Any], runs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    doc = {"meta": {**meta, "wall_s": round(wall_s, 1)}, "summary": summarize(runs) if runs else {}, "runs": runs}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return doc


def _csv(value: str, cast: type = str) -> list[Any]:
    try:
        return [cast(x.strip()) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"ablate: cannot read {value!r}: {exc}") from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker ablate``."""
    add_config_args(p)
    p.add_argument("--modes", default="grpo,filter,ssr", help="comma-separated algorithm.ssr.mode values (default: all three)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--seed-list", default=None, help="explicit comma-separated seeds (instead of --seeds)")
    p.add_argument("--rethink", default="off", help="comma-separated variants: off, on, nll0 (rethinking with nll_coef 0)")
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (default learner.total_steps)")
    p.add_argument("--out", default=None, help="output folder (default run.run_dir)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in <out>/ablation.json")


def cmd_ablate(args: Any) -> int:
    cfg = config_from_args(args)
    seeds = _csv(args.seed_list, int) if args.seed_list else list(range(args.seeds))
    doc = run_ablation(
        cfg,
        modes=_csv(args.modes),
        seeds=seeds,
        rethinks=_csv(args.rethink),
        steps=args.steps,
        out=Path(args.out) if args.out else None,
        resume=args.resume,
    )
    print(markdown_table(doc["summary"]))
    print(f"results: {Path(args.out or cfg.run.run_dir) / 'ablation.json'}")
    for p in doc.get("plots", []):
        print(f"curve:   {p}")
    if doc.get("stopped_by"):
        return 130 if doc["stopped_by"] == "SIGINT" else 143
    return 0 if all(r["returncode"] == 0 for r in doc["runs"]) else 1
