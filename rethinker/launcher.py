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
or on a child exceeding its budget (or exiting with 2, a configuration error); then every process
it started is gone, grandchildren included.  When Redis does not answer, the launcher starts its own
``redis-server`` as a supervised child (AOF ``everysec`` in ``<run_dir>/redis`` unless
``launcher.redis_appendonly`` is false; requiring ``redis.password`` when one is set) and stops it
at the end.

Secrets: a run without ``learner.weight_sync.token`` gets a generated one; Redis is reached (or
started) with ``redis.password`` (or the URL's password; TLS settings for ``rediss://``).  The run's
``<run_dir>/config.yaml`` is written 0600 with every secret shown as ``***``; the children get the
secrets through their environment (``common.config.secret_env``), never on a command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from common.cli_args import add_config_args
from common.config import RethinkerConfig, config_to_yaml, load_config, secret_env
from common.errors import LauncherError
from common.logging import get_logger
from rethinker.progress import LearnerProgress, ProgressReporter, read_learner_status, status_line
from rethinker.supervisor import Child, ChildFailed, RestartPolicy, Supervisor, clean_env

__all__ = ["Child", "RunResult", "clean_env", "plan_children", "run_system"]

log = get_logger("launcher")


class ServiceDied(LauncherError, RuntimeError):
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
    stopped_by: str | None = None  # the signal (SIGINT / SIGTERM) that ended the run early, if any


def probe_services(cfg: RethinkerConfig, children: list[Child]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Last `/v1/status` of every live rollout server and `/v1/stats` of the buffer."""
    rollouts: dict[str, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    from common.http_guard import auth_headers

    read = auth_headers(cfg.buffer.read_token or cfg.buffer.admin_token)  # buffer reads may need a token
    with httpx.Client(timeout=5.0) as http:
        for ch in children:
            if ch.name.startswith("rollout-") and ch.alive() and ch.health_url:
                try:
                    rollouts[ch.name] = http.get(ch.health_url.replace("/healthz", "/v1/status")).json()
                except (httpx.HTTPError, ValueError):
                    pass
        try:
            stats = http.get(f"{cfg.buffer.base_url()}/v1/stats", headers=read).json()
        except (httpx.HTTPError, ValueError):
            pass
    return rollouts, stats


def rethinker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "rethinker.cli", *args]


def new_token() -> str:
    """A fresh random bearer / weight-sync token."""
    return secrets.token_urlsafe(32)


def with_run_secrets(cfg: RethinkerConfig) -> RethinkerConfig:
    """``cfg`` with a generated weight-sync token when it has none (a local run is always guarded)."""
    ws = cfg.learner.weight_sync
    if ws.token is not None:
        return cfg
    return cfg.model_copy(update={"learner": cfg.learner.model_copy(
        update={"weight_sync": ws.model_copy(update={"token": SecretStr(new_token())})})})


def connect_redis(cfg: RethinkerConfig, run_dir: Path) -> tuple[RethinkerConfig, Child | None]:
    """``(cfg, redis_child)``: ``cfg`` pointing at a Redis that answers with its credentials, and the
    supervised local redis-server to start first (with ``launcher.start_redis``, requiring the same
    password) when the configured one does not answer (None when it does)."""
    from rethinker.local_redis import RedisUnavailable, answering

    rc = cfg.redis
    password = rc.effective_password()
    if answering(rc.url, password=password, tls_ca_certs=rc.tls_ca_certs, tls_insecure=rc.tls_insecure):
        return cfg, None
    where = describe_redis(cfg)
    if not cfg.launcher.start_redis:
        raise RedisUnavailable(f"Redis at {where} does not answer (with redis.password when set) and launcher.start_redis is false")
    if rc.url.startswith("rediss://"):
        raise RedisUnavailable(f"Redis at {where} (TLS) does not answer; a local redis-server is started only for "
                               "redis:// URLs: start the TLS server or fix redis.url / redis.tls_ca_certs")
    planned = plan_redis(cfg, run_dir, password)
    if planned is None:
        raise RedisUnavailable(
            f"Redis at {where} does not answer and there is no redis-server to start "
            "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"
        )
    child, url = planned
    update: dict[str, Any] = {"url": url}
    if password is not None and rc.password is None:  # the password came in the URL: keep it
        update["password"] = SecretStr(password)
    return cfg.model_copy(update={"redis": rc.model_copy(update=update)}), child


def describe_redis(cfg: RethinkerConfig) -> str:
    from common.redis_conn import describe

    return describe(cfg.redis)


def write_run_config(cfg: RethinkerConfig, path: Path) -> None:
    """``<run_dir>/config.yaml``: mode 0600, secrets shown as ``***`` (children get them by env)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# Secrets are shown as ***; the processes of the run get them from their environment.\n")
        fh.write(config_to_yaml(cfg))
    os.chmod(path, 0o600)


def restart_policy(cfg: RethinkerConfig) -> RestartPolicy:
    lc = cfg.launcher
    return RestartPolicy(max_restarts=lc.restart_max, window_s=lc.restart_window_s,
                         backoff_s=lc.restart_backoff_s, backoff_max_s=lc.restart_backoff_max_s)


def plan_redis(cfg: RethinkerConfig, run_dir: Path, password: str | None = None) -> tuple[Child, str] | None:
    """A supervised ``redis-server`` for a run whose Redis does not answer: on the configured port
    when the URL names this machine (else a free port), AOF in ``<run_dir>/redis`` when
    ``launcher.redis_appendonly`` (``appendfsync everysec``), requiring ``password`` when given (set
    in a 0600 config file).  None without a redis-server binary."""
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
    conf = state / "redis.conf"  # the password stays off the command line: a 0600 file
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        if password:
            fh.write('requirepass "' + password.replace("\\", "\\\\").replace('"', '\\"') + '"\n')
    os.chmod(conf, 0o600)
    argv = [binary, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "",
            "--appendonly", "yes" if cfg.launcher.redis_appendonly else "no", "--appendfsync", "everysec",
            "--dir", str(state)]
    child = Child("redis", argv, run_dir / "logs" / "redis.log", health_check=lambda: answering(url, password=password),
                  stop_timeout_s=15.0)
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
    env = secret_env(cfg)
    for ch in children:
        ch.threads = cfg.launcher.child_threads
        ch.env = {**ch.env, **env}
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


def learner_idle_share(rows: list[dict[str, Any]]) -> float | None:
    """Seconds the learner waited for data over its step seconds, for the train rows that have both
    (long steps weigh more than short ones; None without step time)."""
    timed = [r for r in rows if "idle_s" in r and "step_s" in r]
    wall = sum(float(r["step_s"]) for r in timed)
    return sum(float(r["idle_s"]) for r in timed) / wall if wall > 0 else None


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
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = LearnerProgress(run_dir)
    cfg, redis_child = connect_redis(with_run_secrets(cfg), run_dir)
    config_path = run_dir / "config.yaml"
    write_run_config(cfg, config_path)

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
        from common.http_guard import auth_headers

        http = httpx.Client(timeout=2.0, headers=auth_headers(cfg.buffer.read_token or cfg.buffer.admin_token))
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
            result.stopped_by = signal.Signals(stop_requested["signal"]).name
            log.info("stopping", reason=result.stopped_by)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rethinker up``."""
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="override learner.total_steps")
    p.add_argument("--no-learner", action="store_true", help="start the services only (Ctrl-C stops them)")


def cmd_up(args: Any) -> int:
    """`rethinker up`: run the whole system with a live status line (a plain line every
    `launcher.progress_every_s` seconds when stderr is not a terminal)."""
    # A config that requires a weight-sync token (learner.weight_sync.require_token) gets a fresh
    # one here when none is set: a local run needs no pre-shared secret.
    cfg = load_config(args.config, args.overrides, generate={"learner.weight_sync.token": new_token})
    if args.steps is not None:
        cfg.learner.total_steps = args.steps
    with ProgressReporter(cfg.learner.total_steps, stream=sys.stderr, interval_s=cfg.launcher.progress_every_s) as progress:
        result = run_system(cfg, learner=not args.no_learner, on_tick=progress.tick)
        final = read_learner_status(Path(cfg.run.run_dir))
        progress.note(f"run dir: {cfg.run.run_dir}  logs: {cfg.run.run_dir}/logs  final: {status_line(final, {})}")
    return result.returncode
