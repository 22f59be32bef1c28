"""The CPU demo (`rethinker demo`, run by `make demo`).

1. Builds the tiny Qwen2.5-VL (`model.path`) and the synthetic visual task (`data.train_path` /
   `data.eval_path`, kinds `launcher.demo_data_kinds`) when they are missing.
2. Format warm-up: `launcher.warmup_sft_steps` SFT steps on answers that carry no image information
   ("The answer is \\boxed{X}." with a random letter), so the model answers in the right format and
   stays at chance.  The warmed model is written to `<run_dir>/warm-model` and trained from.
3. Held-out accuracy of the warmed model (greedy, the training verifier).
4. `rethinker up`: verifier, buffer, rollout servers and learner as separate processes, trained
   with GRPO + SSR + Forced Rethinking; the learner evaluates every `learner.eval_every` steps.
5. Held-out accuracy of the final checkpoint, then `<run_dir>/summary.json` and
   `<run_dir>/learning_curve.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common.cli_args import add_config_args, config_from_args
from common.config import RethinkerConfig
from common.logging import get_logger
from rethinker.launcher import clean_env
from rethinker.progress import ProgressReporter

log = get_logger("demo")


def prepare_data(cfg: RethinkerConfig) -> None:
    from devtools.synth_data import synth_dataset

    train = Path(cfg.data.train_path)
    if train.exists() and (cfg.data.eval_path is None or Path(cfg.data.eval_path).exists()):
        return
    out = train.parent
    synth_dataset(out, n=cfg.launcher.demo_data_n, seed=cfg.run.seed, kinds=list(cfg.launcher.demo_data_kinds),
                  levels=list(cfg.launcher.demo_data_levels))
    if not train.exists():
        raise FileNotFoundError(f"data.train_path {train} was not produced by the synthetic generator in {out}")


def last_sft_step(log_path: Path) -> int:
    """The last `sft_step` the warm-up logged (0 before the first)."""
    step = 0
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"sft_step"' in line:
                try:
                    step = int(json.loads(line).get("step", step))
                except ValueError:
                    continue
    except OSError:
        pass
    return step


def warm_up(cfg: RethinkerConfig, run_dir: Path, progress: ProgressReporter | None = None) -> RethinkerConfig:
    """The format warm-up (`launcher.warmup_sft_steps` SFT steps, its own process so that its
    DeepSpeed state stays there) into `<run_dir>/warm-model`; returns the config training from it."""
    from common.config import secret_env
    from rethinker.launcher import rethinker_argv, write_run_config

    warm = run_dir / "warm-model"
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = cfg.launcher.warmup_sft_steps
    log.info("demo_warmup", steps=steps, out=str(warm))
    write_run_config(cfg, run_dir / "warmup-config.yaml")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "logs" / "warmup.log"
    with open(log_path, "wb") as fh:
        argv = rethinker_argv("sft-warmup", "--config", str(run_dir / "warmup-config.yaml"), "--out", str(warm))
        env = {**clean_env(cfg.launcher.child_threads), **secret_env(cfg)}
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if progress is not None:
                    progress.note_every(f"format warm-up: step {last_sft_step(log_path)}/{steps}")
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # interrupted: do not leave the warm-up running
                proc.terminate()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"format warm-up failed; see {log_path}")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(warm), "build_tiny_if_missing": False})})


def evaluate_model(cfg: RethinkerConfig, model_path: str, out_dir: Path) -> dict[str, float]:
    """Greedy held-out accuracy of the model at `model_path` on `data.eval_path`."""
    from common.model_loading import load_model
    from evaluation.periodic import make_eval_fn

    model = load_model(model_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    eval_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path})})
    fn = make_eval_fn(eval_cfg, model, out_dir=out_dir)
    return fn(0)


def reset_namespace(cfg: RethinkerConfig) -> int:
    """Delete every key of the run's Redis namespace: a demo run starts from an empty system."""
    from common.redis_conn import sync_client
    from common.redis_keys import RedisKeys

    r = sync_client(cfg.redis)
    n = 0
    for pattern in RedisKeys(cfg.redis.namespace).all_patterns():
        keys = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            n += r.unlink(*keys[i : i + 500])
    r.close()
    return n


def latest_export(cfg: RethinkerConfig) -> str | None:
    """The newest transformers-format checkpoint the learner wrote (a folder with config.json)."""
    root = Path(cfg.learner.checkpoint_dir)
    candidates = [p.parent for p in root.glob("**/config.json")] if root.exists() else []
    return str(max(candidates, key=lambda p: p.stat().st_mtime)) if candidates else None


def summarize(
    cfg: RethinkerConfig, run_dir: Path, *, initial: float, final: float | None, result: Any, wall_s: float
) -> dict[str, Any]:
    from rethinker.launcher import learner_idle_share, read_learner_metrics

    rows = read_learner_metrics(run_dir)
    train = [r for r in rows if r.get("prefix") == "train"]
    rethink = [s.get("rethinking", {}) for s in result.rollout_status.values()]
    replayed = sum(r.get("replayed", 0.0) for r in train)
    trained = sum(r.get("samples", 0.0) for r in train)
    idle = learner_idle_share(train)
    split: dict[str, float] = {}  # the rollout servers' wall time by activity, summed over servers
    for s in result.rollout_status.values():
        for k, v in (s.get("actor", {}).get("seconds") or {}).items():
            split[k] = split.get(k, 0.0) + float(v)
    split_total = sum(split.values())
    versions = [s.get("loaded_version") for s in result.rollout_status.values()]
    return {
        "initial_eval_accuracy": initial,
        "final_eval_accuracy": final,
        "steps": int(train[-1]["step"]) if train else 0,
        "stopped_early": bool(train) and int(train[-1]["step"]) < cfg.learner.total_steps,
        "wall_s": round(wall_s, 1),
        "train_wall_s": round(result.wall_s, 1),
        "weight_syncs": int(sum(r.get("sync_ok", 0.0) for r in train)),
        "rollout_versions": versions,
        "rethink_triggered": int(sum(r.get("triggered", 0) for r in rethink)),
        "rethink_kept": int(sum(r.get("kept", 0) for r in rethink)),
        "replayed_samples": int(replayed),
        "replayed_share": round(replayed / trained, 4) if trained else 0.0,
        "batch_fill_mean": round(sum(r.get("batch_fill", 1.0) for r in train) / len(train), 4) if train else None,
        "learner_idle_share": round(idle, 4) if idle is not None else None,
        "rollout_time_share": {k: round(v / split_total, 4) for k, v in split.items()} if split_total > 0 else None,
        "reward_first": train[0].get("reward_mean") if train else None,
        "reward_last": train[-1].get("reward_mean") if train else None,
        "eval_curve": [(r["step"], r["accuracy"]) for r in rows if r.get("prefix") == "eval" and "accuracy" in r],
        "returncode": result.returncode,
        "dashboard_url": result.dashboard_url,
    }


def plot_curve(rows: list[dict[str, Any]], initial: float, final: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("prefix") == "train" and "reward_mean" in r]
    evals = [r for r in rows if r.get("prefix") == "eval" and "accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], lw=1, alpha=0.6, label="reward of the trained batch (SSR draws by |A|)")
    xs = [0] + [r["step"] for r in evals]
    ys = [initial] + [r["accuracy"] for r in evals]
    ax.plot(xs, ys, marker="o", lw=2, label="held-out accuracy (greedy)")
    if final is not None and train:
        ax.scatter([train[-1]["step"]], [final], marker="*", s=150, color="black", zorder=5, label="final checkpoint")
    ax.axhline(0.25, ls="--", color="grey", lw=1, label="chance (4 options)")
    ax.set_xlabel("learner step")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("VL-Rethinker CPU demo: tiny Qwen2.5-VL on the synthetic visual task")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(cfg: RethinkerConfig, progress: ProgressReporter | None = None) -> dict[str, Any]:
    from devtools.tiny_model import ensure_model
    from rethinker.launcher import read_learner_metrics, run_system

    def note(text: str) -> None:
        if progress is not None:
            progress.note(text)

    t0 = time.monotonic()
    run_dir = Path(cfg.run.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a demo run always starts fresh (no resume of an older run)
    run_dir.mkdir(parents=True)
    note("demo: preparing the synthetic data and the tiny model")
    prepare_data(cfg)
    ensure_model(cfg.model)
    note(f"demo: format warm-up, {cfg.launcher.warmup_sft_steps} SFT steps")
    cfg = warm_up(cfg, run_dir, progress)
    note("demo: held-out accuracy of the warmed-up model")
    initial = evaluate_model(cfg, cfg.model.path, run_dir / "eval-initial")["accuracy"]
    log.info("demo_initial_eval", accuracy=initial)
    note(f"demo: initial accuracy {initial:.3f}; starting the services and the learner")
    from rethinker.local_redis import ensure_redis

    cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": ensure_redis(cfg.redis.url)})})
    log.info("demo_reset_namespace", namespace=cfg.redis.namespace, keys_deleted=reset_namespace(cfg))
    result = run_system(cfg, on_tick=progress.tick if progress is not None else None)
    final_model = latest_export(cfg)
    note("demo: held-out accuracy of the final checkpoint")
    final = evaluate_model(cfg, final_model, run_dir / "eval-final")["accuracy"] if final_model else None
    summary = summarize(cfg, run_dir, initial=initial, final=final, result=result, wall_s=time.monotonic() - t0)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curve(read_learner_metrics(run_dir), initial, final, run_dir / "learning_curve.png")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker demo``."""
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="override learner.total_steps")


def cmd_demo(args: Any) -> int:
    cfg = config_from_args(args)
    if args.steps is not None:
        cfg.learner.total_steps = args.steps
    with ProgressReporter(cfg.learner.total_steps, interval_s=cfg.launcher.progress_every_s) as progress:
        summary = run_demo(cfg, progress)
    run_dir = Path(cfg.run.run_dir)
    print(json.dumps({k: summary[k] for k in (
        "initial_eval_accuracy", "final_eval_accuracy", "steps", "wall_s", "weight_syncs",
        "rethink_triggered", "rethink_kept", "replayed_samples", "replayed_share", "learner_idle_share")}))
    print(f"summary:        {run_dir / 'summary.json'}")
    print(f"learning curve: {run_dir / 'learning_curve.png'}")
    print(f"logs:           {run_dir / 'logs'}")
    print(f"buffer dashboard (while services run, e.g. `rethinker up --no-learner`): {summary['dashboard_url']}")
    return summary["returncode"]
