#!/usr/bin/env python3
"""The compose stack for real (`make compose-smoke`, opt-in): build the CPU image, run, check, tear down.

What it does, in order, and what makes it fail (exit 1, after tearing down what it started):

1. Docker engine: uses the one that answers; if none does (and it runs as root), starts
   ``dockerd --bridge=none --iptables=false --ip-forward=false`` itself and stops that process by
   its pid at the end.  No bridge or user network is ever created: every container runs
   with host networking (``deploy/docker/compose.hostnet.yml``) and talks on 127.0.0.1 only.
2. Base image: ``--base-image`` (default the registry-free ``vl-rethinker-base:bookworm``); when
   that tag is missing it is built with ``deploy/docker/base/build-base.sh`` (mmdebstrap + docker
   import).  Nothing is pulled from an image registry.  Redis runs from the same base image
   (``redis-server`` is in it) unless ``--redis-image`` names another.
3. Image: ``docker build --network host`` of ``deploy/docker/Dockerfile.cpu`` (the classic builder,
   so no BuildKit frontend image is pulled), with the torch wheel source from ``--torch-index`` and
   pip's indexes from ``--pip-index``; a folder given there (a PEP 503 ``simple/`` tree) is served
   read-only over HTTP on 127.0.0.1 for the duration of the build.  ``--no-build`` uses the image as
   it is.
4. Stack: ``docker compose`` (v2) if present, else ``docker-compose`` (1.29); ``up -d --no-build
   learner`` with both compose files, which runs the tiny-model / data / warm-up jobs, then redis,
   verifier, buffer, two rollout servers and the learner in their ``depends_on`` order.
5. Checks: the learner reaches ``--steps`` steps (the policy version in the buffer's ``/v1/stats``);
   every service's ``/healthz`` answers 200 from the host and every container with a health check
   is ``healthy``; the buffer's dashboard (``/``) and ``/v1/stats`` answer from the host; rollout-1's
   main process is killed (SIGKILL, a crash) and its restart policy must bring the container back
   (restart count up, ``/healthz`` 200 again, healthy) while the learner goes on for
   ``--steps-after`` more steps.
6. ``down -v`` (containers, volumes), always.

Prints one JSON line: build seconds, time from ``up`` to the first learner step, steps done,
restarts seen, and the failures if any.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "docker" / "compose.hostnet.yml"]
BASE_SCRIPT = REPO / "deploy" / "docker" / "base" / "build-base.sh"
DEFAULT_BASE = "vl-rethinker-base:bookworm"
SERVICES = ["redis", "verifier", "buffer", "rollout-1", "rollout-2", "learner"]
JOBS = ["tiny-model", "synth-data", "sft-warmup"]
# host ports of the override (compose.hostnet.yml's SMOKE_* variables)
PORT_VARS = {
    "SMOKE_REDIS_PORT": 27379, "SMOKE_VERIFIER_PORT": 27100, "SMOKE_BUFFER_PORT": 27200,
    "SMOKE_ROLLOUT_1_PORT": 27301, "SMOKE_ROLLOUT_2_PORT": 27302, "SMOKE_SYNC_PORT": 27600,
}
SYNC_PORT_SPAN = 32  # learner.weight_sync.port_span (default): rounds use [port, port + span)


class SmokeFailure(RuntimeError):
    """A check of the lane failed (the message says which)."""


def log(msg: str) -> None:
    print(f"[compose-smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess:
    try:
        # uncaptured output goes to stderr: stdout carries only the JSON line
        cp = subprocess.run(cmd, env=env, timeout=timeout, text=True, cwd=REPO,
                            stdout=subprocess.PIPE if capture else sys.stderr,
                            stderr=subprocess.STDOUT if capture else sys.stderr)
    except subprocess.TimeoutExpired as exc:
        raise SmokeFailure(f"{' '.join(cmd[:4])} ... did not finish within {timeout:.0f} s") from exc
    if check and cp.returncode != 0:
        tail = (cp.stdout or "")[-3000:] if capture else ""
        raise SmokeFailure(f"{' '.join(cmd[:6])} ... exited {cp.returncode}\n{tail}")
    return cp


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1 only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------- docker


@dataclass
class DockerDaemon:
    """The Docker engine the lane talks to, and the dockerd process if the lane started it."""

    docker: str
    started: subprocess.Popen | None = None
    log_path: Path | None = None

    def answers(self) -> bool:
        cp = subprocess.run([self.docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                            timeout=30)
        return cp.returncode == 0 and bool(cp.stdout.strip())

    def version(self) -> str:
        cp = subprocess.run([self.docker, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True, timeout=30)
        return cp.stdout.strip()

    def start(self, workdir: Path) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SmokeFailure("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise SmokeFailure("no Docker engine answers; starting dockerd needs root (or start one yourself)")
        self.log_path = workdir / "dockerd.log"
        # not niced: the containers inherit the engine's priority, and the stack must keep pace
        # with its own health checks; the image build gets a low CPU weight instead (--cpu-shares)
        cmd = [dockerd, "--bridge=none", "--iptables=false", "--ip-forward=false",
               "--ip-masq=false", "--pidfile", str(workdir / "dockerd.pid")]
        log(f"no engine answers: starting {' '.join(cmd)}")
        with open(self.log_path, "wb") as out:
            self.started = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                raise SmokeFailure(f"dockerd exited {self.started.returncode} (log: {self.log_path})")
            if self.answers():
                return
            time.sleep(1)
        raise SmokeFailure(f"dockerd did not answer within 90 s (log: {self.log_path})")

    def stop(self) -> None:
        if self.started is None or self.started.poll() is not None:
            return
        log(f"stopping the dockerd it started (pid {self.started.pid})")
        self.started.send_signal(signal.SIGTERM)
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=30)


def compose_command(docker: str) -> list[str]:
    """``docker compose`` when the v2 plugin is there, else ``docker-compose`` (1.29)."""
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SmokeFailure("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")


# ------------------------------------------------------------------------------------ wheel indexes


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass


@dataclass
class IndexServers:
    """Serves local PEP 503 folders read-only on 127.0.0.1 while the image builds."""

    first_port: int = 27900  # fixed ports: the build arguments, and so the build cache, stay the same
    servers: list[http.server.ThreadingHTTPServer] = field(default_factory=list)
    served: dict[Path, str] = field(default_factory=dict)

    def url(self, source: str) -> str:
        """A URL stays as it is; a folder ``.../simple`` is served and its URL returned."""
        if "://" in source:
            return source
        folder = Path(source).resolve()
        if not folder.is_dir():
            raise SmokeFailure(f"--torch-index/--pip-index {source}: neither a URL nor a folder")
        if folder in self.served:
            return self.served[folder]
        root, sub = (folder.parent, folder.name) if folder.name == "simple" else (folder, "")
        handler = functools.partial(_QuietHandler, directory=str(root))
        port = self.first_port + len(self.servers)
        try:
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise SmokeFailure(f"cannot serve {folder} on 127.0.0.1:{port} ({exc}); set SMOKE_INDEX_PORT") from exc
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        url = f"http://127.0.0.1:{port}/{sub}".rstrip("/")
        self.served[folder] = url
        log(f"serving {folder} at {url}")
        return url

    def close(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        self.servers.clear()
        self.served.clear()


# ------------------------------------------------------------------------------------------ stack


@dataclass
class Stack:
    compose: list[str]
    project: str
    env: dict[str, str]

    def cmd(self, *args: str) -> list[str]:
        files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        return [*self.compose, "-p", self.project, *files, *args]

    def run(self, *args: str, timeout: float, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
        return run(self.cmd(*args), env=self.env, timeout=timeout, check=check, capture=capture)

    def container(self, service: str) -> str:
        cid = self.run("ps", "-q", service, timeout=60).stdout.strip().splitlines()
        if not cid:
            raise SmokeFailure(f"no container for service {service}")
        return cid[-1]


def inspect(docker: str, cid: str) -> dict:
    cp = run([docker, "inspect", cid], timeout=30)
    return json.loads(cp.stdout)[0]


def stats(buffer_url: str) -> dict | None:
    status, body = http_get(f"{buffer_url}/v1/stats")
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def policy_version(buffer_url: str) -> int:
    st = stats(buffer_url)
    pv = None if st is None else st.get("policy_version")
    return -1 if pv is None else int(pv)


def wait_for(what: str, cond, timeout: float, poll: float = 2.0, on_poll=None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="vl-rethinker:cpu-smoke", help="tag of the CPU image to build and run")
    p.add_argument("--base-image", default=DEFAULT_BASE,
                   help=f"BASE_IMAGE of the build (default {DEFAULT_BASE}, built here with mmdebstrap when missing)")
    p.add_argument("--redis-image", default=None, help="image of the redis service (default: the base image)")
    p.add_argument("--ca-cert", action="append", default=[],
                   help="CA certificate (PEM) the base image must trust (HTTPS proxy or mirror); repeatable")
    p.add_argument("--torch-index", action="append", default=[], metavar="URL|DIR",
                   help="torch wheel source: first is TORCH_INDEX_URL, more are TORCH_EXTRA_INDEX_URL; "
                        "a folder is served on 127.0.0.1 during the build (default: the Dockerfile's)")
    p.add_argument("--pip-index", action="append", default=[], metavar="URL|DIR",
                   help="extra index for the other packages (PIP_EXTRA_INDEX_URL), repeatable")
    p.add_argument("--no-build", action="store_true", help="run the existing --image, do not build")
    p.add_argument("--steps", type=int, default=5, help="learner steps to wait for before the restart check")
    p.add_argument("--steps-after", type=int, default=3, help="learner steps required after the rollout came back")
    p.add_argument("--timeout", type=float, default=5400.0, help="limit of the whole run after the build (s)")
    p.add_argument("--build-timeout", type=float, default=3600.0)
    p.add_argument("--project", default="rethinker-smoke", help="compose project name")
    p.add_argument("--keep-up", action="store_true", help="leave the stack running (debugging); no down -v")
    args = p.parse_args(argv)
    for name in ("steps", "steps_after"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose-smoke-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    docker = shutil.which("docker")
    result: dict = {"benchmark": "compose_smoke", "ok": False, "steps_target": args.steps}
    failures: list[str] = []
    if docker is None:
        failures.append("docker CLI not found (apt-get install docker.io)")
        result["failures"] = failures
        print(json.dumps(result), flush=True)
        return 1
    daemon = DockerDaemon(docker)
    indexes = IndexServers(first_port=int(os.environ.get("SMOKE_INDEX_PORT", "27900")))
    stack: Stack | None = None
    t_all = time.monotonic()
    try:
        if not daemon.answers():
            daemon.start(workdir)
        result["engine"] = daemon.version()
        result["engine_started_by_lane"] = daemon.started is not None
        compose = compose_command(docker)
        result["compose"] = run([*compose, "version", "--short"], timeout=30, check=False).stdout.strip()

        # ---------------------------------------------------------------- base image and build
        base_present = run([docker, "image", "inspect", args.base_image], timeout=30, check=False).returncode == 0
        if not base_present:
            if args.base_image != DEFAULT_BASE:
                raise SmokeFailure(f"base image {args.base_image} is not present (the lane pulls nothing)")
            log(f"building {args.base_image} with {BASE_SCRIPT.relative_to(REPO)}")
            cmd = ["nice", "-n", "10", str(BASE_SCRIPT), "--tag", args.base_image]
            for c in args.ca_cert:
                cmd += ["--ca-cert", c]
            t0 = time.monotonic()
            run(cmd, timeout=1800, capture=False)
            result["base_build_s"] = round(time.monotonic() - t0, 1)
        result["base_image"] = args.base_image

        if args.no_build:
            if run([docker, "image", "inspect", args.image], timeout=30, check=False).returncode != 0:
                raise SmokeFailure(f"--no-build: image {args.image} is not present")
            result["build_s"] = None
        else:
            build_args = {"BASE_IMAGE": args.base_image}
            if args.torch_index:
                urls = [indexes.url(s) for s in args.torch_index]
                build_args["TORCH_INDEX_URL"] = urls[0]
                build_args["TORCH_EXTRA_INDEX_URL"] = " ".join(urls[1:])
            if args.pip_index:
                build_args["PIP_EXTRA_INDEX_URL"] = " ".join(indexes.url(s) for s in args.pip_index)
            if args.ca_cert:
                build_args["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
            # --cpu-shares: the build's containers yield the CPU to others (the machine may be shared)
            cmd = ["nice", "-n", "10", docker, "build", "--network", "host", "--cpu-shares", "256",
                   "-f", "deploy/docker/Dockerfile.cpu", "-t", args.image]
            for k, v in build_args.items():
                cmd += ["--build-arg", f"{k}={v}"]
            cmd.append(".")
            log(f"building {args.image} (BASE_IMAGE={args.base_image})")
            t0 = time.monotonic()
            run(cmd, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=args.build_timeout, capture=False)
            result["build_s"] = round(time.monotonic() - t0, 1)
        indexes.close()
        size = run([docker, "image", "inspect", "--format", "{{.Size}}", args.image], timeout=30).stdout.strip()
        result["image_gb"] = round(int(size) / 1e9, 2)

        # ---------------------------------------------------------------- stack up
        ports = {k: int(os.environ.get(k, v)) for k, v in PORT_VARS.items()}
        busy = [f"{k}={v}" for k, v in ports.items() if not port_free(v)]
        sync = ports["SMOKE_SYNC_PORT"]
        busy += [f"weight-sync port {q}" for q in range(sync + 1, sync + SYNC_PORT_SPAN) if not port_free(q)]
        if busy:
            raise SmokeFailure(f"ports in use on 127.0.0.1: {', '.join(busy)} (set the SMOKE_*_PORT variables)")
        env = {**os.environ, **{k: str(v) for k, v in ports.items()},
               "RETHINKER_CPU_IMAGE": args.image, "REDIS_IMAGE": args.redis_image or args.base_image,
               "COMPOSE_PROJECT_NAME": args.project}
        stack = Stack(compose, args.project, env)
        buffer_url = f"http://127.0.0.1:{ports['SMOKE_BUFFER_PORT']}"
        stack.run("config", "-q", timeout=60)
        # leftovers of an interrupted earlier run of the same project
        stack.run("down", "-v", "--remove-orphans", timeout=300, check=False)
        deadline = time.monotonic() + args.timeout
        log("compose up (jobs, then redis, verifier, buffer, rollouts, learner)")
        t_up = time.monotonic()
        stack.run("up", "-d", "--no-build", "learner", timeout=max(60.0, deadline - time.monotonic()), capture=False)
        result["up_s"] = round(time.monotonic() - t_up, 1)

        def learner_alive() -> None:
            state = inspect(docker, stack.container("learner"))["State"]
            if not state["Running"] and state["ExitCode"] != 0 and state.get("Restarting") is not True:
                raise SmokeFailure(f"the learner exited {state['ExitCode']}")

        wait_for("the first learner step", lambda: policy_version(buffer_url) >= 1,
                 timeout=max(1.0, deadline - time.monotonic()), on_poll=learner_alive)
        result["first_step_s"] = round(time.monotonic() - t_up, 1)
        log(f"first learner step {result['first_step_s']} s after up")
        wait_for(f"{args.steps} learner steps", lambda: policy_version(buffer_url) >= args.steps,
                 timeout=max(1.0, deadline - time.monotonic()), on_poll=learner_alive)

        # ---------------------------------------------------------------- health, dashboard, stats
        health_urls = {
            "verifier": f"http://127.0.0.1:{ports['SMOKE_VERIFIER_PORT']}/healthz",
            "buffer": f"{buffer_url}/healthz",
            "rollout-1": f"http://127.0.0.1:{ports['SMOKE_ROLLOUT_1_PORT']}/healthz",
            "rollout-2": f"http://127.0.0.1:{ports['SMOKE_ROLLOUT_2_PORT']}/healthz",
        }
        problems: list[str] = []
        for svc, url in health_urls.items():
            status, body = http_get(url)
            if status != 200:
                problems.append(f"{svc}: GET {url} -> {status} {body[:200]!r}")

        def container_health() -> dict[str, str]:
            out = {}
            for svc in SERVICES:
                st = inspect(docker, stack.container(svc))["State"]
                out[svc] = st.get("Health", {}).get("Status", "running" if st["Running"] else st["Status"])
            return out

        def all_healthy() -> bool:
            # a health check runs every interval: "starting" turns "healthy" after the first probe
            # that passes (the learner can reach --steps before its first probe); "unhealthy" fails
            health = result["health"] = container_health()
            bad = [f"{svc}: container {h}" for svc, h in health.items() if h not in ("healthy", "running", "starting")]
            if bad:
                raise SmokeFailure("; ".join(bad))
            return all(h in ("healthy", "running") for h in health.values())

        wait_for("every container to be healthy", all_healthy, timeout=max(1.0, min(300.0, deadline - time.monotonic())))
        for job in JOBS:
            st = inspect(docker, stack.container(job))["State"]
            if st["Running"] or st["ExitCode"] != 0:
                problems.append(f"job {job}: running={st['Running']} exit={st['ExitCode']}")
        status, body = http_get(f"{buffer_url}/")
        if status != 200 or b"<html" not in body.lower():
            problems.append(f"buffer dashboard GET / -> {status}")
        st = stats(buffer_url)
        if st is None or "policy_version" not in st:
            problems.append("buffer GET /v1/stats did not answer with the statistics")
        else:
            result["stats_live_servers"] = st.get("servers", {}).get("live")
        if problems:
            raise SmokeFailure("; ".join(problems))

        # ---------------------------------------------------------------- crash and restart
        victim = "rollout-1"
        cid = stack.container(victim)
        before = inspect(docker, cid)
        pid, restarts0 = before["State"]["Pid"], before["RestartCount"]
        log(f"killing {victim}'s main process (pid {pid} on the host) with SIGKILL")
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            info = inspect(docker, cid)
            return (info["RestartCount"] > restarts0 and info["State"]["Running"]
                    and info["State"].get("Health", {}).get("Status") == "healthy"
                    and http_get(health_urls[victim])[0] == 200)

        wait_for(f"{victim} to be restarted and healthy", back, timeout=max(1.0, deadline - time.monotonic()),
                 on_poll=learner_alive)
        result["restart_recovery_s"] = round(time.monotonic() - t_kill, 1)
        after = inspect(docker, cid)
        result["restarts"] = {victim: after["RestartCount"] - restarts0}
        pv_back = policy_version(buffer_url)
        wait_for(f"{args.steps_after} more learner steps after the restart",
                 lambda: policy_version(buffer_url) >= pv_back + args.steps_after,
                 timeout=max(1.0, deadline - time.monotonic()), on_poll=learner_alive)
        result["steps"] = policy_version(buffer_url)
        st = stats(buffer_url) or {}
        result["stats_live_servers_end"] = st.get("servers", {}).get("live")
        result["ok"] = True
    except SmokeFailure as exc:
        failures.append(str(exc).splitlines()[0][:500])
        log(f"FAILED: {exc}")
        if stack is not None:
            cp = stack.run("logs", "--no-color", "--tail", "40", timeout=120, check=False)
            print(cp.stdout[-20000:], file=sys.stderr)
        result["ok"] = False
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        indexes.close()
        if stack is not None:
            with contextlib.suppress(Exception):
                result.setdefault("steps", policy_version(f"http://127.0.0.1:{stack.env['SMOKE_BUFFER_PORT']}"))
            if not args.keep_up:
                log("compose down -v")
                cp = stack.run("down", "-v", "--remove-orphans", timeout=600, check=False)
                if cp.returncode != 0:
                    failures.append(f"down -v exited {cp.returncode}")
                    result["ok"] = False
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - t_all, 1)
    if failures:
        result["failures"] = failures
        result["ok"] = False
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
