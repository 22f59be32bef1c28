"""Local launcher (`rethinker up`): the whole system as separate processes on one machine.

Starts (or connects to) Redis, then the verifier, the buffer service, N rollout servers and the
learner, each as its own `rethinker ...` subprocess with its log in `<run_dir>/logs/`.  Waits for
every service's health endpoint, then streams a compact status line (step, reward, effective share,
versions, throughput).  When the learner finishes, or on Ctrl-C / SIGTERM, it stops everything in
order (learner first, so it can checkpoint; rollouts next, so they return unfinished tasks; then the
buffer and verifier) and prints a summary.  A service that dies unexpectedly stops the run with its
log's tail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from common.config import RethinkerConfig, config_to_yaml
from common.logging import get_logger

log = get_logger("launcher")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    proc: subprocess.Popen | None = None
    essential: bool = True
    stopped: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
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


class ServiceDied(RuntimeError):
    pass


def rethinker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "rethinker.cli", *args]


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


def read_learner_status(run_dir: Path) -> dict[str, Any]:
    """The learner's last metrics line (it appends one JSON object per step to metrics.jsonl)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError, IndexError):
        return {}


def status_line(learner: dict[str, Any], stats: dict[str, Any]) -> str:
    def f(key: str, d: dict[str, Any], fmt: str = "{:.3f}") -> str:
        v = d.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    sizes = stats.get("sizes", {}) if isinstance(stats.get("sizes"), dict) else {}
    return (
        f"step {learner.get('step', '-')} | reward {f('reward_mean', learner)} | "
        f"eval {f('eval_accuracy', learner)} | eff {f('effective_share', learner)} | "
        f"v{stats.get('policy_version', learner.get('policy_version', '-'))} | "
        f"buffer fresh {sizes.get('fresh', '-')} replay {sizes.get('replay', '-')} | "
        f"tok/s {f('tokens_per_s', learner, '{:.0f}')}"
    )


def run_system(
    cfg: RethinkerConfig,
    *,
    learner: bool = True,
    on_tick: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    stop_after_s: float | None = None,
) -> int:
    """Start everything, wait for the learner (or a signal), stop everything; returns an exit code."""
    from rethinker.local_redis import RedisUnavailable, answering, start_local

    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not answering(cfg.redis.url):
        if not cfg.launcher.start_redis:
            raise RedisUnavailable(f"Redis at {cfg.redis.url} does not answer and launcher.start_redis is false")
        url = start_local(run_dir / "redis", appendonly=True)
        if url is None:
            raise RedisUnavailable(f"Redis at {cfg.redis.url} does not answer and redis-server could not be started")
        cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": url})})
    config_path = run_dir / "config.yaml"
    config_path.write_text(config_to_yaml(cfg))

    children = plan_children(cfg, config_path, run_dir, learner=learner)
    stop_requested = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    t0 = time.monotonic()
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
            status = read_learner_status(run_dir)
            if on_tick:
                on_tick(status, stats)
            time.sleep(1.0)
        http.close()
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
    return rc


def cmd_up(args: Any) -> int:
    """`rethinker up`: run the whole system with a live status line."""
    from rich.console import Console
    from rich.live import Live

    from rethinker.cli import config_from_args

    cfg = config_from_args(args)
    if args.steps is not None:
        cfg.learner.total_steps = args.steps
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        def tick(status: dict[str, Any], stats: dict[str, Any]) -> None:
            done = status.get("step", 0) or 0
            live.update(f"[bold]{done}/{cfg.learner.total_steps}[/bold]  {status_line(status, stats)}")

        rc = run_system(cfg, learner=not args.no_learner, on_tick=tick)
    final = read_learner_status(Path(cfg.run.run_dir))
    console.print(f"run dir: {cfg.run.run_dir}  logs: {cfg.run.run_dir}/logs  final: {status_line(final, {})}")
    return rc
