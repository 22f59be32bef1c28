"""Process supervision for the local launcher: children in their own process groups, restarted with
backoff under a restart budget, and stopped with everything they started.

``Child`` is one supervised command (its log in a file, an optional health check).  Each child runs
as the leader of a new session and process group (``start_new_session``), so that Ctrl-C reaches
the launcher only and so that ``kill_group`` reaches every process the child started (verifier pool
workers, a torch compile worker ...) even after the child itself is gone.

``Supervisor.poll()`` looks at every child once: a child that exited is logged with its exit code
and the tail of its log, its process group is cleared of leftovers, and it is restarted after a
backoff of ``restart_backoff_s * 2**(k-1)`` seconds (capped at ``restart_backoff_max_s``) where ``k``
counts its exits within the last ``restart_window_s`` seconds.  A child that exits more than
``max_restarts`` times within that window exceeds its budget: ``poll`` raises ``BudgetExceeded`` and
the run ends; so does a child exiting with 2, the CLI's configuration/usage error (``ChildFailed``).  A child marked ``finishes`` (the learner) that exits with 0 is done, not restarted.
``stop_all`` stops the children in reverse start order (SIGTERM, then SIGKILL of the whole group
after the child's grace period) and then kills whatever is left in each group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.errors import LauncherError
from common.logging import get_logger

log = get_logger("launcher.supervisor")

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


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: it exists
        return True


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to every process of group ``pgid``; False when the group is empty."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


@dataclass
class Child:
    """One supervised process: a command, its log, and how to tell it is up."""

    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    proc: subprocess.Popen | None = None
    stopped: bool = False
    threads: int = 0
    env: dict[str, str] = field(default_factory=dict)
    # A custom readiness check (Redis: PING); used instead of `health_url` when set.
    health_check: Callable[[], bool] | None = None
    # Exit code 0 means the work is done (the learner): not restarted, ends the run.
    finishes: bool = False
    stop_timeout_s: float = 30.0
    restarts: int = 0
    exits: list[float] = field(default_factory=list)  # monotonic times of unexpected exits
    restart_at: float | None = None  # when a pending restart is due
    pgid: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "ab")
        env = {**clean_env(self.threads), **self.env}
        self.proc = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # own session and process group: Ctrl-C reaches the launcher only
        )
        fh.close()
        self.pgid = self.proc.pid
        self.stopped = False
        self.restart_at = None
        log.info("started", service=self.name, pid=self.proc.pid, log=str(self.log_path), restarts=self.restarts)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def clear_group(self) -> None:
        """Kill whatever is left in the child's process group (its own children)."""
        if self.pgid is not None and kill_group(self.pgid):
            deadline = time.monotonic() + 5.0
            while group_alive(self.pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            log.info("group_cleared", service=self.name, pgid=self.pgid)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` (default ``stop_timeout_s``), SIGKILL the group; then
        kill what is left of the group.  Returns the exit code."""
        self.stopped = True
        self.restart_at = None
        if self.proc is None:
            return None
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("kill_after_timeout", service=self.name, timeout_s=timeout_s)
                kill_group(self.pgid or self.proc.pid)
                self.proc.wait()
        if self.pgid is not None and group_alive(self.pgid):
            # the leader is gone; give the rest of its group a moment to follow, then kill it
            deadline = time.monotonic() + min(5.0, timeout_s)
            while group_alive(self.pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.clear_group()
        return self.proc.returncode


class ChildFailed(LauncherError, RuntimeError):
    """A child failed in a way that ends the run."""

    def __init__(self, child: Child, message: str) -> None:
        super().__init__(message)
        self.child = child


class BudgetExceeded(ChildFailed):
    """A child exited more often than its restart budget allows."""


# Exit code of the `rethinker` CLI for a configuration or usage error: the same command would fail
# the same way again, so the child is not restarted.
USAGE_ERROR = 2


@dataclass
class RestartPolicy:
    """Backoff and budget of automatic restarts (``launcher.restart_*``)."""

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def backoff(self, recent_exits: int) -> float:
        return min(self.backoff_s * 2 ** max(0, recent_exits - 1), self.backoff_max_s)


@dataclass
class ChildEvent:
    """What ``Supervisor.poll`` saw: a child exited (and will restart) or finished its work."""

    name: str
    kind: str  # "exited" | "restarted" | "finished"
    returncode: int | None
    at: float


class Supervisor:
    """Watches a list of children and restarts the ones that die (see the module docstring)."""

    def __init__(self, children: list[Child], policy: RestartPolicy, *, on_event: Callable[[ChildEvent], None] | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        self.children = children
        self.policy = policy
        self.on_event = on_event
        self.report = report or (lambda msg: None)
        self.events: list[ChildEvent] = []
        self.finished: Child | None = None

    def _event(self, ch: Child, kind: str) -> None:
        ev = ChildEvent(ch.name, kind, ch.returncode, time.time())
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def poll(self) -> Child | None:
        """One look at every child.  Returns the child whose work is done (exit 0 of a
        ``finishes`` child), raises ``BudgetExceeded``, else restarts what is due and returns None."""
        now = time.monotonic()
        for ch in self.children:
            if ch.proc is None or ch.stopped:
                continue
            if ch.restart_at is not None:
                if now >= ch.restart_at:
                    ch.restarts += 1
                    ch.start()
                    self._event(ch, "restarted")
                continue
            rc = ch.proc.poll()
            if rc is None:
                continue
            if ch.finishes and rc == 0:
                ch.clear_group()
                self.finished = ch
                self._event(ch, "finished")
                return ch
            ch.exits = [t for t in ch.exits if now - t <= self.policy.window_s] + [now]
            self._event(ch, "exited")
            tail = ch.tail()
            ch.clear_group()
            if rc == USAGE_ERROR:
                log.error("child_config_error", service=ch.name, returncode=rc)
                raise ChildFailed(ch, f"{ch.name} exited with {rc} (a configuration or usage error; not restarted). "
                                      f"Last log lines:\n{tail}")
            if len(ch.exits) > self.policy.max_restarts:
                msg = (f"{ch.name} exited with {rc} ({len(ch.exits)} exits within {self.policy.window_s:.0f}s, "
                       f"budget launcher.restart_max={self.policy.max_restarts}); last log lines:\n{tail}")
                log.error("restart_budget_exceeded", service=ch.name, returncode=rc, exits=len(ch.exits))
                raise BudgetExceeded(ch, msg)
            delay = self.policy.backoff(len(ch.exits))
            log.warning("child_exited", service=ch.name, returncode=rc, restart_in_s=delay,
                        exits_in_window=len(ch.exits), log_tail=tail[-2000:])
            self.report(f"{ch.name} exited with {rc}; restarting in {delay:.1f}s. Last log lines:\n{tail}")
            ch.restart_at = now + delay
        return None

    def stop_all(self) -> dict[str, int | None]:
        """Stop every child, last started first; every process group is empty afterwards."""
        codes: dict[str, int | None] = {}
        for ch in reversed(self.children):
            if ch.proc is not None:
                codes[ch.name] = ch.stop()
                log.info("stopped", service=ch.name, returncode=codes[ch.name])
        return codes
