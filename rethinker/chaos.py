"""Fault injection on a live local system: the harness of the chaos test and of benchmarks/chaos.py.

``run_chaos`` starts ``rethinker up`` (its own supervised Redis with AOF, the verifier, the buffer
service, rollout servers and the learner) as a subprocess, waits for training to run, then injects
one fault at a time -- SIGKILL of a rollout server, the verifier, the buffer service, the learner,
and of the Redis server (the launcher restarts it from its AOF) -- each after a few learner steps.
For every fault it records when the launcher restarted the process and when the learner finished
its next step (the recovery time).  A monitor thread samples the published policy version.  At the
end it takes one consistent snapshot of the queue and the store (MULTI) to count lost prompt tasks
(published, neither stored as a group nor still queued) and duplicate groups (stored more often
than there are distinct group ids), stops the launcher with SIGTERM and lists every process of the
run still alive.  ``ChaosReport`` holds it all; nothing here asserts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rethinker.local_redis import free_ports

FAULTS = ("rollout", "verifier", "buffer", "learner", "redis")
ROOT = Path(__file__).resolve().parents[1]


def json_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a service log (other lines skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = re.search(r'\{"ts".*\}', line)
        if m:
            try:
                out.append(json.loads(m.group(0)))
            except ValueError:
                pass
    return out


@dataclass
class FaultResult:
    fault: str  # which process was killed
    target: str  # its launcher name (rollout-0, verifier, ...)
    pid: int
    step_before: int  # learner steps finished when the fault hit
    restarted_s: float | None = None  # fault -> the launcher started it again
    recovery_s: float | None = None  # fault -> the learner finished a step after that restart
    next_step: int | None = None  # that step's number
    held_tasks: int | None = None  # rollout fault: prompt tasks the server held when it was killed
    learner_resumed_at: int | None = None  # learner fault: the step it resumed from
    checkpoint_before: int | None = None  # learner fault: the last complete checkpoint at the kill


@dataclass
class ChaosReport:
    faults: list[FaultResult] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # learner step events in log order
    versions_seen: list[int] = field(default_factory=list)  # published policy versions, in sampling order
    version_went_back: bool = False
    published_tasks: int = 0
    stored_groups: int = 0
    distinct_groups: int = 0
    queued_tasks: int = 0
    lost_tasks: int = 0
    lost_examples: list[str] = field(default_factory=list)
    duplicate_groups: int = 0
    launcher_rc: int | None = None
    stray_processes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _VersionMonitor(threading.Thread):
    def __init__(self, url: str, key: str, every_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="chaos-version-monitor")
        self.url, self.key, self.every_s = url, key, every_s
        self.seen: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        import redis

        r = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        while not self.stop_event.wait(self.every_s):
            try:
                v = r.hget(self.key, "version")
            except Exception:  # noqa: BLE001 - Redis is being restarted
                continue
            if v is not None and (not self.seen or int(v) != self.seen[-1]):
                self.seen.append(int(v))


class ChaosRun:
    """One live system under ``workdir`` and the faults injected into it."""

    def __init__(self, workdir: Path, *, config: str = "configs/tiny-cpu.yaml", rollout_servers: int = 2,
                 prompts_per_step: int = 4, checkpoint_every: int = 2, overrides: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.run_dir = self.workdir / "run"
        self.logs = self.run_dir / "logs"
        self.namespace = f"chaos-{uuid.uuid4().hex[:8]}"
        redis_port, v, b, r, w = free_ports(5)
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.buffer_port = b
        self.rollout_port = r
        self.config = config
        self.overrides = [
            f"run.run_dir={self.run_dir}",
            f"learner.checkpoint_dir={self.run_dir / 'ckpt'}",
            f"redis.url={self.redis_url}",
            f"redis.namespace={self.namespace}",
            f"verifier.port={v}",
            f"buffer.port={b}",
            f"rollout.port={r}",
            f"learner.weight_sync.master_port={w}",
            "learner.total_steps=100000",
            "learner.eval_every=0",
            f"learner.prompts_per_step={prompts_per_step}",
            "learner.micro_batch_size=16",
            f"learner.checkpoint_every={checkpoint_every}",
            "learner.stop_after_empty_rounds=0",
            f"launcher.rollout_servers={rollout_servers}",
            "launcher.restart_backoff_s=1",
            *overrides,
        ]
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    # ---- setup
    def prepare(self) -> None:
        """The tiny model (shared cache) and a small synthetic data set for this run."""
        from devtools.synth_data import synth_dataset
        from devtools.tiny_model import ensure_tiny_model

        cache = Path(os.environ.get("RETHINKER_CACHE_DIR") or ROOT / ".cache")
        model = ensure_tiny_model(cache / "tiny-model-seed0", seed=0, size="tiny")
        data = self.workdir / "data"
        if not (data / "train.parquet").exists():
            synth_dataset(data, n=64, seed=0, eval_fraction=0.1)
        self.overrides += [f"model.path={model}", f"data.train_path={data / 'train.parquet'}",
                           f"data.eval_path={data / 'eval.parquet'}"]

    def start(self) -> None:
        args = [sys.executable, "-m", "rethinker.cli", "up", "-c", self.config]
        for o in self.overrides:
            args += ["--set", o]
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["PYTHONUNBUFFERED"] = "1"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.workdir / "up.out", "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.t0 = time.time()

    # ---- observation
    def launcher_events(self) -> list[dict[str, Any]]:
        return json_events(self.logs / "launcher.log")

    def pid_of(self, service: str) -> int | None:
        pids = [int(e["pid"]) for e in self.launcher_events() if e.get("event") == "started" and e.get("service") == service]
        return pids[-1] if pids else None

    def step_events(self) -> list[dict[str, Any]]:
        return [e for e in json_events(self.logs / "learner.log") if e.get("event") == "step"]

    def last_step(self) -> int:
        steps = self.step_events()
        return int(steps[-1]["step"]) if steps else 0

    def latest_checkpoint(self) -> int | None:
        f = self.run_dir / "ckpt" / "LATEST"
        try:
            return int(f.read_text().strip().split("-")[1])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_steps(self, n: int, timeout_s: float) -> int:
        """Until ``n`` more learner steps finished; returns the last step."""
        start = len(self.step_events())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"rethinker up exited with {self.proc.returncode}:\n{self.tail()}")
            if len(self.step_events()) - start >= n:
                return self.last_step()
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {n} learner steps in {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        out = []
        for name in ("up.out",):
            try:
                out.append((self.workdir / name).read_bytes()[-n:].decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    # ---- faults
    def inject(self, fault: str, recovery_timeout_s: float) -> FaultResult:
        target = {"rollout": "rollout-0"}.get(fault, fault)
        pid = self.pid_of(target)
        if pid is None:
            raise RuntimeError(f"no pid known for {target}")
        held = self.wait_rollout_busy() if fault == "rollout" else None
        res = FaultResult(fault=fault, target=target, pid=pid, step_before=self.last_step(), held_tasks=held)
        n_steps = len(self.step_events())
        if fault == "learner":
            res.checkpoint_before = self.latest_checkpoint()
        t_fault = time.time()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + recovery_timeout_s + 120  # measure past the budget too
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"rethinker up exited with {self.proc.returncode} after killing {target}:\n{self.tail()}")
            if res.restarted_s is None:
                for e in self.launcher_events():
                    if e.get("event") == "started" and e.get("service") == target and float(e["ts"]) >= t_fault:
                        res.restarted_s = float(e["ts"]) - t_fault
                        break
            if res.restarted_s is not None:
                restart_ts = t_fault + res.restarted_s
                later = [e for e in self.step_events()[n_steps:] if float(e["ts"]) >= restart_ts]
                if later:
                    res.recovery_s = float(later[0]["ts"]) - t_fault
                    res.next_step = int(later[0]["step"])
                    break
            time.sleep(0.25)
        if fault == "learner":
            starts = [e for e in json_events(self.logs / "learner.log") if e.get("event") == "learner_started"
                      and float(e["ts"]) >= t_fault]
            if starts:
                res.learner_resumed_at = int(starts[0]["step"])
        return res

    def wait_rollout_busy(self, timeout_s: float = 30.0) -> int:
        """Until rollout-0 holds claimed tasks (so that killing it leaves tasks pending under its
        id); returns how many it holds (0 if it never did within the timeout)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                st = httpx.get(f"http://127.0.0.1:{self.rollout_port}/v1/status", timeout=2.0).json()
                n = int(st.get("actor", {}).get("in_flight_tasks") or 0)
                if n > 0:
                    return n
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        return 0

    # ---- bookkeeping
    def snapshot_counts(self, report: ChaosReport) -> None:
        """One MULTI snapshot: published tasks vs stored groups vs the queue."""
        import redis

        from common.redis_keys import RedisKeys

        k = RedisKeys(self.namespace)
        r = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        pub_keys = sorted(r.scan_iter(match=k.task_published_in(0).rsplit(":", 1)[0] + ":*"))
        with r.pipeline(transaction=True) as p:
            for key in pub_keys:
                p.hvals(key)
            p.hkeys(k.group_meta)
            p.hget(k.counters, "groups")
            p.xrange(k.task_stream)
            replies = p.execute()
        published: set[str] = set()
        for vals in replies[: len(pub_keys)]:
            published |= {v.decode() for v in vals}
        gids = {g.decode() for g in replies[len(pub_keys)]}
        stored = int(replies[len(pub_keys) + 1] or 0)
        queued = {fields[b"t"].decode() for _eid, fields in replies[len(pub_keys) + 2] if b"t" in fields}
        lost = sorted(t for t in published if f"g-{t}" not in gids and t not in queued)  # common.schemas.group_id_for
        report.published_tasks = len(published)
        report.stored_groups = stored
        report.distinct_groups = len(gids)
        report.queued_tasks = len(queued)
        report.lost_tasks = len(lost)
        report.lost_examples = lost[:10]
        report.duplicate_groups = stored - len(gids)

    def stop(self, report: ChaosReport, timeout_s: float = 240.0) -> None:
        pgids = {int(e["pid"]) for e in self.launcher_events() if e.get("event") == "started" and "pid" in e}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                report.launcher_rc = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                report.error += f"launcher did not stop within {timeout_s:.0f}s; "
        elif self.proc is not None:
            report.launcher_rc = self.proc.returncode
        report.stray_processes = self.strays(pgids)
        self.kill_everything(pgids)

    def strays(self, pgids: set[int]) -> list[str]:
        import psutil

        out = []
        marker = str(self.run_dir)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if (marker in cmd or os.getpgid(p.info["pid"]) in pgids) and p.info["pid"] != os.getpid():
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(f"{p.info['pid']}: {cmd[:200]}")
            except (psutil.Error, ProcessLookupError, OSError):
                continue
        return out

    def kill_everything(self, pgids: set[int]) -> None:
        """Last resort after a failed run: every process group this run started."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for g in pgids:
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_out", None):
            self._out.close()


def run_chaos(workdir: Path, *, faults: tuple[str, ...] = FAULTS, steps_between: int = 2,
              recovery_timeout_s: float = 60.0, start_timeout_s: float = 600.0, **kw: Any) -> ChaosReport:
    """Start the system, inject ``faults`` one at a time (``steps_between`` learner steps apart),
    count, stop.  Always stops every process it started."""
    run = ChaosRun(workdir, **kw)
    report = ChaosReport()
    t0 = time.monotonic()
    monitor: _VersionMonitor | None = None
    try:
        run.prepare()
        run.start()
        from common.redis_keys import RedisKeys

        monitor = _VersionMonitor(run.redis_url, RedisKeys(run.namespace).policy_version)
        monitor.start()
        run.wait_steps(steps_between + 1, start_timeout_s)
        for fault in faults:
            run.wait_steps(steps_between, 300)
            report.faults.append(run.inject(fault, recovery_timeout_s))
        run.wait_steps(steps_between, 300)
        run.snapshot_counts(report)
    except Exception as exc:  # noqa: BLE001 - reported, and everything is stopped below
        report.error += f"{type(exc).__name__}: {exc}"[:4000]
    finally:
        if monitor is not None:
            monitor.stop_event.set()
            monitor.join(5)
            report.versions_seen = monitor.seen
            report.version_went_back = any(b < a for a, b in zip(monitor.seen, monitor.seen[1:]))
        report.steps = [int(e["step"]) for e in run.step_events()]
        run.stop(report)
        report.wall_s = time.monotonic() - t0
    return report
