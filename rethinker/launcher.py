"""Local launcher (`rethinker up`): the whole system as separate processes on one machine.

Starts (or connects to) Redis, then the verifier, the buffer service, N rollout servers and the
learner, each as its own `rethinker ...` subprocess with its log in `<run_dir>/logs/`.  Waits for
every service's health endpoint, then streams a compact status line (step, reward, effective share,
versions, throughput).  When the learner finishes, or on Ctrl-C / SIGTERM, it stops everything in
order (learner first, so it can checkpoint; rollouts next, so they return unfinished tasks; then the
buffer and verifier, Redis last) and prints a summary.

Supervision (``rethinker.supervisor``): every child runs in its own process group; one that dies is
logged with its exit code and log tail and restarted with backoff, within a restart budget
(``launcher.restart_*``).  The run ends only on SIGINT/SIGTERM, on the learner finishing (exit 0),
or on a child exceeding its budget (or exiting with 2, a configuration error); then every process it started is gone, grandchildren
included.  When Redis does not answer, the launcher starts its own ``redis-server`` as a supervised
child (AOF ``everysec`` in ``<run_dir>/redis`` unless ``launcher.redis_appendonly`` is false) and
stops it at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from common.config import RethinkerConfig, config_to_yaml
from common.logging import get_logger
from rethinker.progress import LearnerProgress, ProgressReporter, read_learner_status, status_line
from rethinker.supervisor import Child, ChildFailed, RestartPolicy, Supervisor, clean_env

__all__ = ["Child", "RunResult", "clean_env", "plan_children", "run_system"]

log = get_logger("launcher")


class ServiceDied(RuntimeError):
    pass


@dataclass
class RunResult:
    """What `run_system` saw: exit code, wall time, and the services' last status before stopping."""

    returncode: int
    wall_s: float
    rollout_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    buffer_stats: dict[str, Any] = field(default_factory=dict)
    dashboard_url: str = ""
    restarts: dict[str, int] = field(default_factory=dict)  # supervised restarts per child


def probe_services(cfg: RethinkerConfig, children: list[Child]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Last `/v1/status` of every live rollout server and `/v1/stats` of the buffer."""
    rollouts: dict[str, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    with httpx.Client(timeout=5.0) as http:
        for ch in children:
            if ch.name.startswith("rollout-") and ch.alive() and ch.health_url:
                try:
                    rollouts[ch.name] = http.get(ch.health_url.replace("/healthz", "/v1/status")).json()
                except (httpx.HTTPError, ValueError):
                    pass
        try:
            stats = http.get(f"{cfg.buffer.base_url()}/v1/stats").json()
        except (httpx.HTTPError, ValueError):
            pass
    return rollouts, stats


def rethinker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "rethinker.cli", *args]


def restart_policy(cfg: RethinkerConfig) -> RestartPolicy:
    lc = cfg.launcher
    return RestartPolicy(max_restarts=lc.restart_max, window_s=lc.restart_window_s,
                         backoff_s=lc.restart_backoff_s, backoff_max_s=lc.restart_backoff_max_s)


def plan_redis(cfg: RethinkerConfig, run_dir: Path) -> tuple[Child, str] | None:
    """A supervised ``redis-server`` for a run whose Redis does not answer: on the configured port
    when the URL names this machine (else a free port), AOF in ``<run_dir>/redis`` when
    ``launcher.redis_appendonly`` (``appendfsync everysec``).  None without a redis-server binary."""
    from rethinker.local_redis import answering, free_port

    binary = shutil.which("redis-server")
    if binary is None:
        return None
    parts = urlsplit(cfg.redis.url)
    local = parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None
    port = parts.port if local else free_port()
    url = f"redis://127.0.0.1:{port}{parts.path or '/0'}"
    state = (run_dir / "redis").resolve()
    state.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "",
            "--appendonly", "yes" if cfg.launcher.redis_appendonly else "no", "--appendfsync", "everysec",
            "--dir", str(state)]
    child = Child("redis", argv, run_dir / "logs" / "redis.log", health_check=lambda: answering(url), stop_timeout_s=15.0)
    return child, url


def plan_children(cfg: RethinkerConfig, config_path: Path, run_dir: Path, *, learner: bool = True) -> list[Child]:
    """The processes of one run, in start order."""
    logs = run_dir / "logs"
    c = ["--config", str(config_path)]
    children = [
        Child("verifier", rethinker_argv("serve", "verifier", *c), logs / "verifier.log",
              f"{cfg.verifier.base_url()}/healthz"),
        Child("buffer", rethinker_argv("serve", "buffer", *c), logs / "buffer.log", f"{cfg.buffer.base_url()}/healthz"),
    ]
    for i in range(cfg.launcher.rollout_servers):
        port = cfg.rollout.port + i
        children.append(
            Child(
                f"rollout-{i}",
                rethinker_argv("serve", "rollout", *c, "--set", f"rollout.port={port}",
                               "--set", f"rollout.server_id=rollout-{i}"),
                logs / f"rollout-{i}.log",
                f"http://{cfg.rollout.host}:{port}/healthz",
            )
        )
    if learner:
        children.append(Child("learner", rethinker_argv("learn", *c), logs / "learner.log", None,
                              finishes=True, stop_timeout_s=60.0))
    for ch in children:
        ch.threads = cfg.launcher.child_threads
    return children


def wait_healthy(children: list[Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = [ch for ch in children if ch.health_url or ch.health_check]
    with httpx.Client(timeout=2.0) as http:
        while pending:
            for ch in list(pending):
                if not ch.alive():
                    raise ServiceDied(f"{ch.name} exited with {ch.proc.returncode} while starting:\n{ch.tail()}")
                try:
                    up = ch.health_check() if ch.health_check is not None else http.get(ch.health_url).status_code == 200
                except httpx.HTTPError:
                    up = False
                if up:
                    log.info("healthy", service=ch.name, url=ch.health_url)
                    pending.remove(ch)
            if pending and time.monotonic() > deadline:
                names = ", ".join(ch.name for ch in pending)
                raise ServiceDied(f"not healthy after {timeout_s:.0f}s: {names}")
            time.sleep(0.5)


def read_learner_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of the learner's `learner_metrics.jsonl` (one per step and prefix: train / eval)."""
    rows = []
    try:
        with open(run_dir / "learner_metrics.jsonl", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line being written
    except OSError:
        pass
    return rows


def _attach_launcher_log(path: Path) -> logging.Handler:
    """The launcher's own events (starts, exits, restarts, stops) as JSON lines in ``path``."""
    from common.logging import JsonFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    lg = logging.getLogger("launcher")
    lg.addHandler(handler)
    if lg.getEffectiveLevel() > logging.INFO:
        lg.setLevel(logging.INFO)
    return handler


def run_system(
    cfg: RethinkerConfig,
    *,
    learner: bool = True,
    on_tick: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    stop_after_s: float | None = None,
) -> RunResult:
    """Start everything, supervise it until the learner finishes (or a signal, or a child over its
    restart budget), stop everything."""
    from rethinker.local_redis import RedisUnavailable, answering

    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = LearnerProgress(run_dir)
    redis_child: Child | None = None
    if not answering(cfg.redis.url):
        if not cfg.launcher.start_redis:
            raise RedisUnavailable(f"Redis at {cfg.redis.url} does not answer and launcher.start_redis is false")
        planned = plan_redis(cfg, run_dir)
        if planned is None:
            raise RedisUnavailable(
                f"Redis at {cfg.redis.url} does not answer and there is no redis-server to start "
                "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"
            )
        redis_child, url = planned
        cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": url})})
    config_path = run_dir / "config.yaml"
    config_path.write_text(config_to_yaml(cfg))

    children = plan_children(cfg, config_path, run_dir, learner=learner)
    launcher_log = _attach_launcher_log(run_dir / "logs" / "launcher.log")
    if redis_child is not None:
        children.insert(0, redis_child)
    supervisor = Supervisor(children, restart_policy(cfg), report=lambda msg: print(msg, file=sys.stderr))
    stop_requested = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    t0 = time.monotonic()
    result = RunResult(returncode=0, wall_s=0.0, dashboard_url=f"{cfg.buffer.base_url()}/")
    try:
        if redis_child is not None:
            redis_child.start()
            wait_healthy([redis_child], cfg.launcher.health_timeout_s)
        services = [ch for ch in children if ch.name not in ("learner", "redis")]
        for ch in services:
            ch.start()
        wait_healthy(services, cfg.launcher.health_timeout_s)
        for ch in children:
            if ch.name == "learner":
                ch.start()
        learner_child = next((ch for ch in children if ch.name == "learner"), None)
        http = httpx.Client(timeout=2.0)
        while stop_requested["signal"] is None:
            if stop_after_s is not None and time.monotonic() - t0 > stop_after_s:
                break
            if learner_child is None and not services:
                break
            try:
                done = supervisor.poll()
            except ChildFailed as exc:
                print(f"rethinker up: {exc}", file=sys.stderr)
                rc = 1
                break
            if done is not None:  # the learner finished its steps
                break
            try:
                stats = http.get(f"{cfg.buffer.base_url()}/v1/stats").json()
            except (httpx.HTTPError, ValueError):
                stats = {}
            status = progress.poll()
            if on_tick:
                on_tick(status, stats)
            time.sleep(1.0)
        http.close()
        result.rollout_status, result.buffer_stats = probe_services(cfg, children)
        if stop_requested["signal"] is not None:
            log.info("stopping", reason=signal.Signals(stop_requested["signal"]).name)
    except ServiceDied as exc:
        print(f"rethinker up: {exc}", file=sys.stderr)
        rc = 1
    finally:
        supervisor.stop_all()  # learner, rollouts, buffer, verifier, redis; every process group emptied
        for s, h in old.items():
            signal.signal(s, h)
        logging.getLogger("launcher").removeHandler(launcher_log)
        launcher_log.close()
    result.returncode = rc
    result.wall_s = time.monotonic() - t0
    result.restarts = {ch.name: ch.restarts for ch in children if ch.restarts}
    return result


def cmd_up(args: Any) -> int:
    """`rethinker up`: run the whole system with a live status line (a plain line every
    `launcher.progress_every_s` seconds when stderr is not a terminal)."""
    from rethinker.cli import config_from_args

    cfg = config_from_args(args)
    if args.steps is not None:
        cfg.learner.total_steps = args.steps
    with ProgressReporter(cfg.learner.total_steps, stream=sys.stderr, interval_s=cfg.launcher.progress_every_s) as progress:
        result = run_system(cfg, learner=not args.no_learner, on_tick=progress.tick)
        final = read_learner_status(Path(cfg.run.run_dir))
        progress.note(f"run dir: {cfg.run.run_dir}  logs: {cfg.run.run_dir}/logs  final: {status_line(final, {})}")
    return result.returncode
