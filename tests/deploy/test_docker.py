"""The images (deploy/docker), checked offline (building and running them is the opt-in compose lane,
`make compose-smoke`).

What is checked: the Dockerfiles' instructions (base image and torch source as build arguments
with the public defaults, pip settings never kept as ENV, pinned versions that agree with
pyproject/the lock, non-root user, HEALTHCHECK, ENTRYPOINT), that every file they COPY exists and
is not excluded by .dockerignore, that the non-editable install they do contains every package of
the repository, and the two helper scripts they install, run for real.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from deploy_checks import DEPLOY, REPO, WORKDIR, dockerfile_instructions

DOCKER = DEPLOY / "docker"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def instructions(name: str) -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKER / name)


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[name.strip().lower()] = ver.strip()
    return pins


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def ignored(rel: str) -> bool:
    """Docker's .dockerignore rule: a path is excluded if it or a parent folder matches (last match wins)."""
    parts = rel.split("/")
    result = False
    for pat in dockerignore_patterns():
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not neg
    return result


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_basics(name: str) -> None:
    ins = instructions(name)
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "HEALTHCHECK", "ENTRYPOINT", "CMD", "EXPOSE", "LABEL"}
    assert {i for i, _ in ins} <= known
    user = [a for i, a in ins if i == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert [a for i, a in ins if i == "WORKDIR"][-1] == WORKDIR
    assert json.loads([a for i, a in ins if i == "ENTRYPOINT"][-1]) == ["rethinker"]
    hc = [a for i, a in ins if i == "HEALTHCHECK"]
    assert hc and hc[-1].endswith('CMD ["rethinker-healthcheck"]')
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "install -m 0755 /opt/rethinker/deploy/docker/healthcheck.py /usr/local/bin/rethinker-healthcheck" in run
    assert "pip install --no-deps /opt/rethinker" in run
    assert "wget" in run, "KubeRay's Ray pod probes need wget in the image"
    for i, a in ins:
        if i == "COPY":
            *sources, _dest = a.split()
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY source {src} does not exist"
                assert src == "." or not ignored(src), f"{name}: COPY source {src} is excluded by .dockerignore"


def build_args(ins: list[tuple[str, str]]) -> dict[str, str | None]:
    """ARG name -> default (None: declared without one)."""
    out: dict[str, str | None] = {}
    for i, a in ins:
        if i == "ARG":
            name, eq, default = a.partition("=")
            out[name] = default if eq else None
    return out


@pytest.mark.parametrize(("name", "base", "torch_index"), [
    ("Dockerfile.cpu", "python:3.11-slim", "https://download.pytorch.org/whl/cpu"),
    ("Dockerfile.cuda", "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04", ""),  # empty: pip's own index
])
def test_base_image_and_torch_source_are_build_args(name: str, base: str, torch_index: str) -> None:
    """An air-gapped or mirror-only site builds the images with its own base image, torch wheel
    source and pip index; the defaults are the public ones."""
    ins = instructions(name)
    assert ins[0] == ("ARG", f"BASE_IMAGE={base}") and [a for i, a in ins if i == "FROM"] == ["${BASE_IMAGE}"]
    args = build_args(ins)
    assert args["TORCH_INDEX_URL"] == torch_index and args["TORCH_EXTRA_INDEX_URL"] == ""
    for pip_setting in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT"):
        # no default: pip sees them only when given, and a build argument is not kept in the image
        assert args[pip_setting] is None, f"{name}: ARG {pip_setting} must have no default"
        assert not any(pip_setting in a for i, a in ins if i == "ENV"), f"{name}: {pip_setting} must not be an ENV"
    run = " ".join(a for i, a in ins if i == "RUN")
    assert 'for url in ${TORCH_EXTRA_INDEX_URL}; do set -- "$@" --extra-index-url "$url"; done' in run
    if torch_index:
        assert 'pip install --index-url "${TORCH_INDEX_URL}" "$@" "torch==' in run
    else:
        assert 'if [ -n "${TORCH_INDEX_URL}" ]; then set -- --index-url "${TORCH_INDEX_URL}"; fi' in run
        assert 'pip install "$@" "torch==' in run
    # each comment-listed argument of the header exists, and each argument is documented there
    header = (DOCKER / name).read_text().split("FROM", 1)[0]
    for arg in args:
        if arg != "UID" and not arg.startswith("VLLM_"):
            assert arg in header, f"{name}: build argument {arg} is not described in the header"


def test_torch_extra_index_loop_runs() -> None:
    """The shell loop of the torch install turns the space-separated list into pip options."""
    ins = instructions("Dockerfile.cpu")
    run = [a for i, a in ins if i == "RUN" and "TORCH_INDEX_URL" in a][0]
    loop = run[run.index("set --"):run.index("&& pip install --index-url")]
    script = f'{loop} && printf "%s\\n" "$@"'
    for extra, want in (("", []), ("http://a/simple http://b/simple", ["--extra-index-url", "http://a/simple",
                                                                    "--extra-index-url", "http://b/simple"])):
        out = subprocess.run(["sh", "-c", script], env={"TORCH_EXTRA_INDEX_URL": extra, "PATH": os.environ["PATH"]},
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0 and out.stdout.split() == want, out


def test_cpu_image_pins() -> None:
    ins = instructions("Dockerfile.cpu")
    run = " ".join(a for i, a in ins if i == "RUN")
    assert 'python3 -m venv "${VIRTUAL_ENV}"' in run, "a distribution's python3 refuses pip: use a venv"
    pins = lock_pins()
    # torch from the CPU wheel index at the locked version; everything else constrained by the lock
    assert f'"torch=={pins["torch"]}"' in run and f'"torchvision=={pins["torchvision"]}"' in run
    from packaging.requirements import Requirement

    deps = {Requirement(d).name: Requirement(d) for d in PYPROJECT["project"]["dependencies"]}
    for name in ("torch", "torchvision"):
        assert deps[name].specifier.contains(pins[name]), f"the lock's {name} {pins[name]} is outside pyproject's {deps[name]}"
    assert "-c /tmp/build/cpu.lock -r /tmp/build/requirements.txt" in run
    assert "DS_ACCELERATOR=cpu" in " ".join(a for i, a in ins if i == "ENV")


def test_cuda_image_takes_vllm_pins() -> None:
    ins = instructions("Dockerfile.cuda")
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "--extra gpu" in run
    assert PYPROJECT["project"]["optional-dependencies"]["gpu"] == ["vllm==0.33.0"]
    # vllm 0.33.0's own pins (its wheel metadata): torch==2.14.0, torchvision==0.29.0, transformers<5.21
    assert (args["VLLM_TORCH"], args["VLLM_TORCHVISION"]) == ("2.14.0", "0.29.0")
    assert args["VLLM_TRANSFORMERS"].strip('"') == ">=5.20,<5.21"
    for name in ("torch", "torchvision", "transformers"):
        assert f"--override \"{name}" in run


def test_dockerignore() -> None:
    for path in (".git", ".venv", ".cache/models", "runs/tiny-cpu", ".env", "deploy/k8s/overlays/gpu/secrets.env",
                 "services/x/__pycache__/a.pyc", "tests/deploy/test_docker.py"):
        assert ignored(path), f"{path} must stay out of the build context"
    for path in ("pyproject.toml", "README.md", "requirements/cpu.lock", "configs/tiny-cpu.yaml", "common/config.py",
                 "rethinker/cli.py", "services/verifier/__init__.py", "deploy/docker/healthcheck.py"):
        assert not ignored(path), f"{path} is needed in the image"


def test_image_install_contains_every_package() -> None:
    """The images `pip install` the project non-editably: a package the setuptools `include` list
    misses would be absent from the image (every top-level folder with an __init__.py)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name not in ("tests", "benchmarks"))
    missing = [p for p in packages if not any(fnmatch.fnmatch(p, pat) for pat in include)]
    assert missing == [], f"not installed in the images (add to [tool.setuptools.packages.find] include): {missing}"
    for p in packages:
        assert not ignored(p), f"{p}/ is excluded from the build context by .dockerignore"


# --------------------------------------------------------------------------- helper scripts


def run_script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / name), *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def test_pyproject_deps() -> None:
    out = run_script("pyproject_deps.py", str(REPO / "pyproject.toml")).stdout.splitlines()
    assert out == PYPROJECT["project"]["dependencies"]
    res = run_script("pyproject_deps.py", str(REPO / "pyproject.toml"), "--extra", "gpu",
                     "--override", "torch==2.14.0", "--override", "Transformers>=5.20,<5.21", "--override", "extra-pkg==1")
    lines = res.stdout.splitlines()
    assert "torch==2.14.0" in lines and "Transformers>=5.20,<5.21" in lines and "vllm==0.33.0" in lines
    assert not any(l.startswith("torch==2.14.1") or l.startswith("transformers>") for l in lines)
    assert lines[-1] == "extra-pkg==1" and len(lines) == len(PYPROJECT["project"]["dependencies"]) + 2
    bad = run_script("pyproject_deps.py", str(REPO / "pyproject.toml"), "--extra", "nope")
    assert bad.returncode != 0 and "unknown extra 'nope'" in bad.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        code = type(self).status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def health_server():
    handler = type("H", (_Health,), {"status": 200})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, handler
    srv.shutdown()
    srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_script(health_server, tmp_path: Path) -> None:
    srv, handler = health_server
    port = srv.server_address[1]
    assert run_script("healthcheck.py", f"http://127.0.0.1:{port}/healthz").returncode == 0
    # port from the service's config: --set, then a YAML file plus the container's environment
    assert run_script("healthcheck.py", "--cmdline", "rethinker", "serve", "buffer", "--set", f"buffer.port={port}").returncode == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"rollout:\n  port: {free_port()}\n")
    env_run = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), "--cmdline", "/sbin/docker-init", "--", "rethinker", "serve",
         "rollout", "--config", str(cfg)],
        env={**ENV, "RETHINKER__ROLLOUT__PORT": str(port)}, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert env_run.returncode == 0, env_run.stderr
    handler.status = 503  # e.g. a rollout server whose weights are not loaded yet
    res = run_script("healthcheck.py", "--cmdline", "rethinker", "serve", "verifier", "--set", f"verifier.port={port}")
    assert res.returncode == 1 and "not healthy" in res.stderr
    assert run_script("healthcheck.py", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1").returncode == 1
    # no HTTP endpoint to probe: healthy while it runs
    assert run_script("healthcheck.py", "--cmdline", "torchrun", "-m", "rethinker.cli", "learn").returncode == 0
    bad = run_script("healthcheck.py", "--cmdline", "rethinker", "serve", "buffer", "--set", "buffer.prot=1")
    assert bad.returncode == 1 and "buffer.prot" in bad.stderr
