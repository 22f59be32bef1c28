"""Supervision of the local launcher with real subprocesses: restart with backoff, restart budget,
finishing children, process-group cleanup (grandchildren included), a supervised Redis that keeps
its data across a kill -9 (AOF), and `rethinker up` leaving no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from rethinker.chaos import json_events
from rethinker.supervisor import BudgetExceeded, Child, ChildFailed, RestartPolicy, Supervisor, group_alive

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def wait_for(pred, timeout: float = 10.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


def poll_until(sup: Supervisor, pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sup.poll()
        if pred():
            return done
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_a_dying_child_is_restarted_with_backoff_and_its_log_tail_reported(tmp_path):
    marker = tmp_path / "runs"
    code = f"import sys; open({str(marker)!r}, 'a').write('x'); print('last words', flush=True); sys.exit(3)"
    ch = Child("flaky", [PY, "-c", code], tmp_path / "flaky.log")
    reports: list[str] = []
    sup = Supervisor([ch], RestartPolicy(max_restarts=3, window_s=60, backoff_s=0.3, backoff_max_s=0.6), report=reports.append)
    ch.start()
    t0 = time.monotonic()
    poll_until(sup, lambda: ch.restarts == 1)
    first_gap = time.monotonic() - t0
    poll_until(sup, lambda: ch.restarts == 2)
    assert first_gap >= 0.3, "restarted before its backoff"
    assert "flaky exited with 3" in reports[0] and "last words" in reports[0]
    assert [e.kind for e in sup.events][:4] == ["exited", "restarted", "exited", "restarted"]
    assert sup.events[0].returncode == 3
    # budget: 3 restarts tolerated, the 4th exit within the window ends the run
    with pytest.raises(BudgetExceeded) as err:
        poll_until(sup, lambda: False, timeout=15)
    assert err.value.child is ch and "restart_max=3" in str(err.value) and "last words" in str(err.value)
    assert marker.read_text() == "xxxx"
    sup.stop_all()


def test_backoff_doubles_and_is_capped():
    p = RestartPolicy(max_restarts=9, window_s=60, backoff_s=1.0, backoff_max_s=5.0)
    assert [p.backoff(k) for k in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_configuration_error_is_not_restarted(tmp_path):
    ch = Child("learner", [PY, "-c", "import sys; print('learner.lr: bad'); sys.exit(2)"], tmp_path / "l.log")
    sup = Supervisor([ch], RestartPolicy(max_restarts=5, backoff_s=0.0))
    ch.start()
    with pytest.raises(ChildFailed) as err:
        poll_until(sup, lambda: False)
    assert "learner.lr: bad" in str(err.value) and ch.restarts == 0


def test_a_finishing_child_is_done_not_restarted(tmp_path):
    ch = Child("learner", [PY, "-c", "print('done')"], tmp_path / "l.log", finishes=True)
    sup = Supervisor([ch], RestartPolicy(max_restarts=3, backoff_s=0.0))
    ch.start()
    done = poll_until(sup, lambda: sup.finished is not None)
    assert done is ch and ch.restarts == 0 and sup.events[-1].kind == "finished"


def test_a_finishing_child_that_crashes_is_restarted(tmp_path):
    ch = Child("learner", [PY, "-c", "import os; os.kill(os.getpid(), 9)"], tmp_path / "l.log", finishes=True)
    sup = Supervisor([ch], RestartPolicy(max_restarts=3, backoff_s=0.0))
    ch.start()
    poll_until(sup, lambda: ch.restarts >= 1)
    assert sup.finished is None and sup.events[0].returncode == -9
    sup.stop_all()


GRANDPARENT = """
import subprocess, sys, time, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))   # exits on SIGTERM, leaving its child behind
p = subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])
open(sys.argv[1], 'w').write(str(p.pid))
time.sleep(600)
"""


def test_stop_leaves_no_grandchild(tmp_path):
    pidfile = tmp_path / "gc.pid"
    ch = Child("parent", [PY, "-c", GRANDPARENT, str(pidfile)], tmp_path / "p.log", stop_timeout_s=5)
    sup = Supervisor([ch], RestartPolicy())
    ch.start()
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    gc = int(pidfile.read_text())
    assert pid_alive(gc)
    sup.stop_all()
    assert wait_for(lambda: not pid_alive(gc), 10), "grandchild (ignores SIGTERM) survived the stop"
    assert not group_alive(ch.pgid)


def test_a_killed_child_s_grandchildren_are_cleared_before_the_restart(tmp_path):
    pidfile = tmp_path / "gc.pid"
    ch = Child("parent", [PY, "-c", GRANDPARENT, str(pidfile)], tmp_path / "p.log", stop_timeout_s=5)
    sup = Supervisor([ch], RestartPolicy(backoff_s=0.2))
    ch.start()
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    gc = int(pidfile.read_text())
    first = ch.proc.pid
    pidfile.unlink()
    os.kill(first, signal.SIGKILL)
    poll_until(sup, lambda: ch.restarts == 1)
    assert not pid_alive(gc), "the orphaned pool worker of the killed child is still running"
    assert ch.proc.pid != first and ch.alive()
    sup.stop_all()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
def test_supervised_redis_keeps_its_data_across_kill_9(tmp_path):
    from common.config import load_config
    from rethinker.launcher import plan_redis
    from rethinker.local_redis import free_port

    cfg = load_config(overrides=[f"redis.url=redis://127.0.0.1:{free_port()}/0"])
    child, url = plan_redis(cfg, tmp_path)
    assert url == cfg.redis.url, "a local URL keeps its port, so clients reconnect to the same address"
    sup = Supervisor([child], RestartPolicy(backoff_s=0.1))
    child.start()
    try:
        assert wait_for(child.health_check, 10)
        r = redis.Redis.from_url(url)
        r.set("chaos:k", "v1")
        time.sleep(1.5)  # appendfsync everysec: written within a second
        os.kill(child.proc.pid, signal.SIGKILL)
        poll_until(sup, lambda: child.restarts == 1)
        assert wait_for(child.health_check, 10)
        assert r.get("chaos:k") == b"v1", "the AOF did not bring the key back"
    finally:
        sup.stop_all()
    assert not group_alive(child.pgid)


def events(path: Path) -> list[dict]:
    """The JSON log events in the launcher's stderr (the live status display is interleaved)."""
    assert path.exists(), path
    return json_events(path)


def started(path: Path) -> list[tuple[str, int]]:
    return [(e["service"], int(e["pid"])) for e in events(path) if e.get("event") == "started" and "pid" in e]


@pytest.mark.slow
def test_rethinker_up_restarts_a_killed_service_and_leaves_nothing_behind(tmp_path):
    """`rethinker up --no-learner` with its own Redis: kill -9 the verifier (its pool worker is a
    grandchild), it comes back; SIGTERM the launcher: every process it started is gone."""
    from rethinker.local_redis import free_port

    run_dir = tmp_path / "run"
    args = [
        PY, "-m", "rethinker.cli", "up", "--no-learner", "-c", "configs/tiny-cpu.yaml",
        "--set", f"run.run_dir={run_dir}", "--set", f"redis.url=redis://127.0.0.1:{free_port()}/0",
        "--set", "launcher.rollout_servers=0", "--set", f"verifier.port={free_port()}", "--set", f"buffer.port={free_port()}",
        "--set", "launcher.restart_backoff_s=0.5", "--set", "redis.namespace=sup-test",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)
    errlog = tmp_path / "up.err"
    evlog = run_dir / "logs" / "launcher.log"
    with open(errlog, "wb") as fh:
        up = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        healthy = lambda: {e.get("service") for e in events(evlog) if e.get("event") == "healthy"}  # noqa: E731
        assert wait_for(lambda: evlog.exists() and {"redis", "verifier", "buffer"} <= healthy(), 180, 0.5), errlog.read_text()[-3000:]
        first = dict(started(evlog))
        os.kill(first["verifier"], signal.SIGKILL)
        assert wait_for(lambda: len([s for s, _ in started(evlog) if s == "verifier"]) == 2, 60, 0.5), errlog.read_text()[-3000:]
        exited = [e for e in events(evlog) if e.get("event") == "child_exited"]
        assert exited and exited[0]["service"] == "verifier" and exited[0]["returncode"] == -9
        assert "verifier exited with -9" in errlog.read_text()
        pgids = {pid for _, pid in started(evlog)}
        time.sleep(2.0)
        up.send_signal(signal.SIGTERM)
        assert up.wait(120) == 0, errlog.read_text()[-3000:]
    finally:
        if up.poll() is None:  # the launcher's children live in their own groups: stop them too
            up.kill()
            up.wait()
            for _, g in started(evlog) if evlog.exists() else []:
                try:
                    os.killpg(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    left = [g for g in pgids if group_alive(g)]
    assert not left, f"process groups still alive after the launcher stopped: {left}"
