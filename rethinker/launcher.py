"""Local launcher (`rethinker up`): the whole system as separate processes on one machine.

Starts (or connects to) Redis, then the verifier, the buffer service, N rollout servers and the
learner, each as its own `rethinker ...` subprocess with its log in `<run_dir>/logs/`.  Waits for
every service's health endpoint, then streams a compact status line (step, reward, effective share,
versions, throughput).  When the learner finishes, or on Ctrl-C / SIGTERM, it stops everything in
order (learner first, so it can checkpoint; rollouts next, so they return unfinished tasks; then the
buffer and verifier) and prints a summary.  A service that dies unexpectedly stops the run with its
log's tail.

Secrets: a run without ``learner.weight_sync.token`` gets a generated one; Redis is reached (or
started) with ``redis.password`` (or the URL's password; TLS settings for ``rediss://``).  The run's
``<run_dir>/config.yaml`` is written 0600 with every secret shown as ``***``; the children get the
secrets through their environment (``common.config.secret_env``), never on a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
from pydantic import SecretStr

from common.config import RethinkerConfig, config_to_yaml, load_config, secret_env
from common.logging import get_logger
from rethinker.progress import LearnerProgress, ProgressReporter, read_learner_status, status_line

log = get_logger("launcher")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    proc: subprocess.Popen | None = None
    stopped: bool = False
    threads: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "ab")
        env = {**clean_env(self.threads), **self.env}
        self.proc = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
        fh.close()
        log.info("started", service=self.name, pid=self.proc.pid, log=str(self.log_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("kill_after_timeout", service=self.name, timeout_s=timeout_s)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(threads: int = 0) -> dict[str, str]:
    """The environment for a child process: unbuffered, without torch.distributed variables (each
    child is its own world; a launcher that ran DeepSpeed in-process must not leak them), and with
    `threads` OMP/MKL threads unless the user set them."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


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


def connect_redis(cfg: RethinkerConfig, run_dir: Path) -> RethinkerConfig:
    """``cfg`` pointing at a Redis that answers with its credentials: the configured one, or (with
    ``launcher.start_redis``) a local redis-server started with the same password."""
    from rethinker.local_redis import RedisUnavailable, answering, start_local

    rc = cfg.redis
    password = rc.effective_password()
    if answering(rc.url, password=password, tls_ca_certs=rc.tls_ca_certs, tls_insecure=rc.tls_insecure):
        return cfg
    where = describe_redis(cfg)
    if not cfg.launcher.start_redis:
        raise RedisUnavailable(f"Redis at {where} does not answer (with redis.password when set) and launcher.start_redis is false")
    if rc.url.startswith("rediss://"):
        raise RedisUnavailable(f"Redis at {where} (TLS) does not answer; a local redis-server is started only for "
                               "redis:// URLs: start the TLS server or fix redis.url / redis.tls_ca_certs")
    url = start_local(run_dir / "redis", appendonly=True, password=password)
    if url is None:
        raise RedisUnavailable(f"Redis at {where} does not answer and redis-server could not be started")
    update: dict[str, Any] = {"url": url}
    if password is not None and rc.password is None:  # the password came in the URL: keep it
        update["password"] = SecretStr(password)
    return cfg.model_copy(update={"redis": rc.model_copy(update=update)})


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
        children.append(Child("learner", rethinker_argv("learn", *c), logs / "learner.log", None))
    env = secret_env(cfg)
    for ch in children:
        ch.threads = cfg.launcher.child_threads
        ch.env = {**ch.env, **env}
    return children


def wait_healthy(children: list[Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = [ch for ch in children if ch.health_url]
    with httpx.Client(timeout=2.0) as http:
        while pending:
            for ch in list(pending):
                if not ch.alive():
                    raise ServiceDied(f"{ch.name} exited with {ch.proc.returncode} while starting:\n{ch.tail()}")
                try:
                    if http.get(ch.health_url).status_code == 200:
                        log.info("healthy", service=ch.name, url=ch.health_url)
                        pending.remove(ch)
                except httpx.HTTPError:
                    pass
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


def run_system(
    cfg: RethinkerConfig,
    *,
    learner: bool = True,
    on_tick: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    stop_after_s: float | None = None,
) -> RunResult:
    """Start everything, wait for the learner (or a signal), stop everything."""
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = LearnerProgress(run_dir)
    cfg = connect_redis(with_run_secrets(cfg), run_dir)
    config_path = run_dir / "config.yaml"
    write_run_config(cfg, config_path)

    children = plan_children(cfg, config_path, run_dir, learner=learner)
    stop_requested = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    t0 = time.monotonic()
    result = RunResult(returncode=0, wall_s=0.0, dashboard_url=f"{cfg.buffer.base_url()}/")
    try:
        services = [ch for ch in children if ch.name != "learner"]
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
            if learner_child is not None and not learner_child.alive():
                rc = learner_child.proc.returncode
                if rc != 0:
                    print(f"learner exited with {rc}:\n{learner_child.tail()}", file=sys.stderr)
                break
            dead = [ch for ch in services if not ch.alive()]
            if dead:
                ch = dead[0]
                print(f"{ch.name} died with {ch.proc.returncode}:\n{ch.tail()}", file=sys.stderr)
                rc = 1
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
        for ch in reversed(children):  # learner, rollouts, buffer, verifier
            if ch.proc is not None:
                code = ch.stop(timeout_s=60.0 if ch.name == "learner" else 30.0)
                log.info("stopped", service=ch.name, returncode=code)
        for s, h in old.items():
            signal.signal(s, h)
    result.returncode = rc
    result.wall_s = time.monotonic() - t0
    return result


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
