"""docker-compose.yml (with docker-compose.override.yml) and the lane's compose.hostnet.yml, offline.

1. The files, merged as compose merges them and after compose's variable interpolation, validate
   against the Compose Specification JSON schema (vendored in schemas/compose_spec.json).
2. Every rethinker container's command parses with the real CLI parser, its config (the mounted
   YAML + its environment) loads with the real config schema, and the ports, health checks,
   service URLs, weight-sync rendezvous and start order agree with that config.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "docker"))
import healthcheck  # noqa: E402  (deploy/docker/healthcheck.py, the images' health check)

from common.config import reveal
from deploy_checks import (
    REPO,
    SERVICE_PATHS,
    WORKDIR,
    Command,
    dockerfile_instructions,
    effective_config,
    host_port,
    parse_command,
)

COMPOSE = REPO / "docker-compose.yml"
HOSTNET = REPO / "deploy" / "docker" / "compose.hostnet.yml"
DEFAULT_OVERRIDE = REPO / "docker-compose.override.yml"
SCHEMA = Path(__file__).parent / "schemas" / "compose_spec.json"

# --------------------------------------------------------------------------- interpolation

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's variable substitution (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?e}``, ``${VAR?e}``) applied to every string of the loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None and not m.group("braced") and not m.group("named"):
            raise InterpolationError(f"invalid interpolation in {value!r}")
        name = m.group("braced") or m.group("named")
        used.add(name)
        op, arg = m.group("op"), m.group("arg")
        present = name in env and (env[name] != "" or op not in (":-", ":?"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load_file(path: Path, env: dict[str, str] | None, used: set[str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(path.read_text()), env or {}, used)


def load_compose(env: dict[str, str] | None = None, *, with_default_override: bool = True) -> tuple[dict[str, Any], set[str]]:
    """What `docker compose up` reads: docker-compose.yml merged with docker-compose.override.yml
    (loaded by default when no -f is given); with_default_override=False: the first file alone, as
    the `-f docker-compose.yml -f deploy/docker/compose.hostnet.yml` run of the lane reads it."""
    used: set[str] = set()
    data = load_file(COMPOSE, env, used)
    if with_default_override:
        data = merge_override(data, load_file(DEFAULT_OVERRIDE, env, used), {"ports"}, DEFAULT_OVERRIDE.name)
    return data, used


def merge_override(base: dict[str, Any], override: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    """Compose's merge of an override file, for the keys it may use here: the mappings
    (environment, healthcheck) merge key by key, ports append, command and network_mode replace."""
    assert {k for k in override if not k.startswith("x-")} == {"services"}, f"{where}: only services belong there"
    out = yaml.safe_load(yaml.safe_dump(base))
    for name, o in override["services"].items():
        assert name in out["services"], f"{where}: unknown service {name}"
        assert set(o) <= allowed, f"{where}: {name} changes {set(o) - allowed}: only {sorted(allowed)} belong there"
        svc = out["services"][name]
        for k, v in o.items():
            if k in ("environment", "healthcheck"):
                svc[k] = {**(svc.get(k) or {}), **v}
            elif k == "ports":
                svc[k] = [*(svc.get(k) or []), *v]
            else:
                svc[k] = v
    return out


# --------------------------------------------------------------------------- schema

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
_PORTS = re.compile(r"^((\[?[0-9a-fA-F.:]+\]?):)?((\d+(-\d+)?):)?\d+(-\d+)?(/(tcp|udp|sctp))?$")
_EXPOSE = re.compile(r"^\d+(-\d+)?(/(tcp|udp|sctp))?$")


def format_checker() -> jsonschema.FormatChecker:
    fc = jsonschema.FormatChecker(formats=())

    @fc.checks("duration")
    def _duration(v: object) -> bool:
        return not isinstance(v, str) or bool(_DURATION.match(v))

    @fc.checks("ports")
    def _ports(v: object) -> bool:
        return isinstance(v, int) or not isinstance(v, str) or bool(_PORTS.match(v))

    @fc.checks("expose")
    def _expose(v: object) -> bool:
        return isinstance(v, int) or not isinstance(v, str) or bool(_EXPOSE.match(v))

    return fc


def schema_errors(doc: dict[str, Any]) -> list[str]:
    import json

    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=format_checker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


# --------------------------------------------------------------------------- model of the file


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv_of(svc: dict[str, Any]) -> list[str]:
    def as_list(v: Any) -> list[str]:
        return [] if v is None else v if isinstance(v, list) else v.split()

    entry = as_list(svc.get("entrypoint")) if "entrypoint" in svc else image_entrypoint(svc)
    return entry + as_list(svc.get("command"))


def dockerfile_of(svc: dict[str, Any]) -> Path | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return REPO / build / "Dockerfile"
    return REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def image_entrypoint(svc: dict[str, Any]) -> list[str]:
    import json

    df = dockerfile_of(svc)
    if df is None:
        return []
    entries = [json.loads(a) for i, a in dockerfile_instructions(df) if i == "ENTRYPOINT"]
    return entries[-1] if entries else []


def is_rethinker(svc: dict[str, Any]) -> bool:
    df = dockerfile_of(svc)
    return df is not None and df.parent == REPO / "deploy" / "docker"


class Service:
    def __init__(self, name: str, svc: dict[str, Any], doc: dict[str, Any]) -> None:
        self.name, self.svc, self.doc = name, svc, doc
        self.env = env_of(svc)
        self.cmd: Command | None = parse_command(argv_of(svc)) if is_rethinker(svc) else None
        if self.cmd is not None:
            assert svc.get("working_dir", WORKDIR) == WORKDIR, f"{name}: the configs' relative paths need {WORKDIR}"
        self.cfg = None
        if self.cmd is not None and self.cmd.config is not None:
            self.source = self.config_source(self.cmd.config)
            self.cfg = effective_config(self.source.read_text(), self.cmd.overrides, self.env, f"service {name}")

    @property
    def profiles(self) -> list[str]:
        return list(self.svc.get("profiles") or [])

    def config_source(self, target: str) -> Path:
        src = self.volume_targets().get(target)
        if src is None or not src.startswith("./"):
            raise AssertionError(f"service {self.name}: --config {target} is not a bind mount of a repository file")
        return (REPO / src).resolve()

    source: Path | None = None

    def deps(self) -> dict[str, str]:
        d = self.svc.get("depends_on") or {}
        return {k: "service_started" for k in d} if isinstance(d, list) else {k: v["condition"] for k, v in d.items()}

    def container_ports(self) -> set[int]:
        out = {int(str(p).split("/")[0]) for p in self.svc.get("expose") or []}
        for p in self.svc.get("ports") or []:
            out.add(int(str(p["target"] if isinstance(p, dict) else p).split(":")[-1].split("/")[0]))
        return out

    def volume_targets(self) -> dict[str, str]:
        out = {}
        for v in self.svc.get("volumes") or []:
            src, target = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            out[target] = src
        return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc, _ = load_compose()
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return {name: Service(name, svc, compose) for name, svc in compose["services"].items()}


def probed_url(s: Service) -> str | None:
    """The URL the image's health check probes in this service's container: its command line (with
    the mounted config file's repository source) and its environment, through the real script."""
    argv = ["rethinker", "serve", s.cmd.role, "--config", str(s.source)]
    for o in s.cmd.overrides:
        argv += ["--set", o]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETHINKER__")}
    with mock.patch.dict(os.environ, {**clean, **s.env}, clear=True):
        return healthcheck.url_for_cmdline(argv)


def group(services: dict[str, "Service"], profile: str | None) -> dict[str, "Service"]:
    """The services one deployment runs: `docker compose up` (no profile), or
    `docker compose --profile P up <learner of P>` (that learner and what it depends on)."""
    if profile is None:
        return {n: s for n, s in services.items() if not s.profiles}
    learners = [n for n, s in services.items() if profile in s.profiles and s.cmd and s.cmd.role == "learn"]
    assert len(learners) == 1, f"profile {profile} needs exactly one learner"
    names = {learners[0]} | closure(services, learners[0])
    return {n: services[n] for n in names}


def closure(services: dict[str, Service], name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        for d in services[n].deps():
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


# --------------------------------------------------------------------------- tests


def test_schema_valid() -> None:
    doc, used = load_compose()
    assert schema_errors(doc) == []
    # every variable has a default, so `docker compose up` runs without a .env file ...
    assert used, "expected ${VAR:-default} interpolation for the secrets"
    # ... and is documented
    guide = (REPO / "docs" / "deployment.md").read_text()
    assert [v for v in sorted(used) if v not in guide] == []


def test_schema_rejects_mistakes() -> None:
    """The validation really bites: a misspelt key, a bad condition and a bad duration fail."""
    doc, _ = load_compose()
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["services"]["verifier"]["helthcheck"] = bad["services"]["verifier"].pop("healthcheck")
    bad["services"]["learner"]["depends_on"]["rollout-1"]["condition"] = "service_ready"
    bad["services"]["redis"]["healthcheck"]["interval"] = "5 seconds"
    errors = " | ".join(schema_errors(bad))
    assert "helthcheck" in errors and "services/learner/depends_on" in errors and "5 seconds" in errors


def test_interpolation_rules() -> None:
    used: set[str] = set()
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A:-x}/${B:-y}/${EMPTY:-z}/${EMPTY-w}/$A/$$A", env, used) == "a/y/z//a/$A"
    assert used == {"A", "B", "EMPTY"}
    with pytest.raises(InterpolationError):
        interpolate("${NOPE:?set it}", env, used)
    doc, _ = load_compose({"REDIS_PASSWORD": "s3cret", "BUFFER_DASHBOARD_PORT": "9200"})
    assert doc["services"]["verifier"]["environment"]["RETHINKER__REDIS__PASSWORD"] == "s3cret"
    assert doc["services"]["buffer"]["ports"] == ["9200:8200"]


def test_commands_parse_and_configs_load(services: dict[str, Service]) -> None:
    roles = {n: s.cmd.role for n, s in services.items() if s.cmd}
    assert roles == {
        "verifier": "verifier",
        "buffer": "buffer",
        "tiny-model": "tiny-model",
        "synth-data": "data",
        "sft-warmup": "sft-warmup",
        "rollout-1": "rollout",
        "rollout-2": "rollout",
        "learner": "learn",
        "verifier-gpu": "verifier",
        "buffer-gpu": "buffer",
        "rollout-gpu-1": "rollout",
        "rollout-gpu-2": "rollout",
        "learner-gpu": "learn",
    }
    for name, s in services.items():
        if s.cmd and s.cmd.role in ("verifier", "buffer", "rollout", "learn", "sft-warmup"):
            assert s.cfg is not None, f"{name} runs without --config"


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_services_agree_with_config(services: dict[str, Service], profile: str | None) -> None:
    g = group(services, profile)
    by_role: dict[str, list[Service]] = {}
    for s in g.values():
        if s.cmd:
            by_role.setdefault(s.cmd.role, []).append(s)
    assert {r: len(v) for r, v in by_role.items() if r in SERVICE_PATHS or r == "learn"} == {
        "verifier": 1, "buffer": 1, "rollout": 2, "learn": 1}
    sources = {s.source for s in g.values() if s.cfg is not None}
    assert len(sources) == 1, f"all services of one deployment must read the same config file, got {sources}"
    assert sources == {REPO / "configs" / ("qwen2.5-vl-7b-8gpu.yaml" if profile == "gpu" else "tiny-cpu.yaml")}
    redis = [s for s in g.values() if str(s.svc.get("image", "")).startswith("redis:")]
    assert len(redis) == 1
    redis = redis[0]
    learner = by_role["learn"][0]

    for s in g.values():
        if s.cfg is None or s.cmd.role not in ("verifier", "buffer", "rollout", "learn"):
            continue  # one-shot jobs (sft-warmup) talk to no service
        cfg, where = s.cfg, f"service {s.name}"
        # clients reach the services by their compose DNS names and configured ports
        for target in ("verifier", "buffer"):
            host, port = host_port(getattr(cfg, target).base_url())
            assert host in g and g[host].cmd.role == target, f"{where}: {target}.url host {host!r} runs no {target}"
            assert port == g[host].cfg.__getattribute__(target).port, f"{where}: {target}.url port {port}"
        host, port = host_port(cfg.redis.url)
        assert (host, port) == (redis.name, 6379), f"{where}: redis.url {cfg.redis.url}"
        assert reveal(cfg.redis.password) == redis.svc["command"][redis.svc["command"].index("--requirepass") + 1]
        assert cfg.learner.weight_sync.token and reveal(cfg.learner.weight_sync.token) == reveal(learner.cfg.learner.weight_sync.token)
        assert cfg.buffer.admin_token and reveal(cfg.buffer.admin_token) == reveal(learner.cfg.buffer.admin_token)
        for section in ("verifier", "rollout"):  # the API tokens: set, and the same for servers and clients
            token = getattr(cfg, section).api_token
            assert token and reveal(token) == reveal(getattr(learner.cfg, section).api_token), f"{where}: {section}.api_token"
        if s.cmd.role in ("rollout", "learn"):  # the weight-sync rendezvous is the learner's compose name
            assert cfg.learner.weight_sync.master_addr == learner.name, f"{where}: weight_sync.master_addr"
            assert cfg.learner.weight_sync.master_port in learner.container_ports()

        if s.cmd.role in SERVICE_PATHS:
            svc_cfg = getattr(cfg, s.cmd.role)
            assert svc_cfg.host == "0.0.0.0", f"{where}: must bind 0.0.0.0 to be reachable"
            assert svc_cfg.port in s.container_ports(), f"{where}: port {svc_cfg.port} not exposed"
            # the check takes its port from the container's own config and environment (PID 1's
            # `rethinker serve ROLE --config F`), so it follows any port override
            assert s.svc["healthcheck"]["test"] == ["CMD", "rethinker-healthcheck"], f"{where}: health check"
            assert probed_url(s) == f"http://127.0.0.1:{svc_cfg.port}/healthz", f"{where}: health check"
            assert "/healthz" in SERVICE_PATHS[s.cmd.role]
        if s.cmd.role == "rollout":
            assert host_port(cfg.rollout.advertise_url) == (s.name, cfg.rollout.port), f"{where}: advertise_url"
            assert cfg.rollout.server_id == s.name
            assert "/workspace/runs" in s.volume_targets(), f"{where}: needs the run dir for published checkpoints"
            assert s.volume_targets()["/workspace/runs"] == learner.volume_targets()["/workspace/runs"]

    # the two rollout servers and the learner run the same config file, with the engine of the profile
    rollouts = by_role["rollout"]
    assert len({s.cfg.rollout.server_id for s in rollouts}) == 2
    engine = "vllm" if profile == "gpu" else "hf"
    assert {s.cfg.rollout.engine for s in rollouts} == {engine}
    assert learner.cfg.learner.weight_sync.backend == ("nccl" if profile == "gpu" else "gloo")


def test_start_order(services: dict[str, Service]) -> None:
    for name, s in services.items():
        for dep, cond in s.deps().items():
            assert dep in services, f"{name} depends on unknown {dep}"
            d = services[dep]
            if cond == "service_healthy":
                assert d.svc.get("healthcheck"), f"{name} waits for {dep} to be healthy, which has no healthcheck"
            if cond == "service_completed_successfully":
                assert d.svc.get("restart", "no") == "no", f"{dep} is a one-shot job: restart must be 'no'"
            assert not d.profiles or set(d.profiles) & set(s.profiles), f"{name} depends on {dep} of another profile"
        if s.cmd and s.cmd.role in ("rollout", "learn"):
            deps = closure(services, name)
            roles = {services[d].cmd.role for d in deps if services[d].cmd} | {"redis" for d in deps if d == "redis"}
            assert {"redis", "verifier", "buffer"} <= roles, f"{name} must start after redis, verifier and buffer"
        if s.cmd and s.cmd.role == "learn":
            rollouts = {n for n, o in services.items() if o.cmd and o.cmd.role == "rollout" and o.profiles == s.profiles}
            assert rollouts <= set(s.deps()), f"{name} must wait for its rollout servers to be healthy"


def test_cpu_demo_prepares_model_and_data(services: dict[str, Service]) -> None:
    """Every model and data path a CPU-demo process loads is written first, on the volume it reads,
    by a one-shot job it waits for: tiny-model -> (with synth-data) sft-warmup -> rollouts, learner."""
    produced: dict[Path, str] = {}
    for name, s in services.items():
        if s.profiles or s.cmd is None:
            continue
        if s.cmd.role == "tiny-model":
            produced[Path(s.cmd.args.dir)] = name
        elif s.cmd.role == "data":
            produced[Path(s.cmd.args.out)] = name
        elif s.cmd.role == "sft-warmup":
            produced[Path(s.cmd.args.out)] = name
    assert sorted(produced.values()) == ["sft-warmup", "synth-data", "tiny-model"]
    cache = services["tiny-model"].volume_targets()[f"{WORKDIR}/.cache"]
    for name in ("sft-warmup", "rollout-1", "rollout-2", "learner"):
        s = services[name]
        assert s.volume_targets().get(f"{WORKDIR}/.cache") == cache, f"{name} must share the cache volume"
        model = Path(WORKDIR) / s.cfg.model.path
        maker = produced.get(model)
        assert maker is not None, f"{name} loads {model}, which no job writes"
        assert maker in closure(services, name) and services[maker].svc.get("restart") == "no"
        if s.cmd.role in ("rollout", "learn"):
            assert maker == "sft-warmup", f"{name} must start from the warmed-up model"
        if s.cmd.role in ("learn", "sft-warmup"):
            for path in (s.cfg.data.train_path, s.cfg.data.eval_path):
                assert produced.get((Path(WORKDIR) / path).parent) == "synth-data", f"{name}: {path}"
            assert "synth-data" in closure(services, name)
    assert services["rollout-1"].deps()["sft-warmup"] == "service_completed_successfully"


def test_gpu_profile(services: dict[str, Service]) -> None:
    gpu = {n: s for n, s in services.items() if "gpu" in s.profiles}
    assert set(gpu) == {"verifier-gpu", "buffer-gpu", "rollout-gpu-1", "rollout-gpu-2", "learner-gpu"}
    assert set(group(services, "gpu")) == set(gpu) | {"redis"}
    seen: set[str] = set()
    for name, s in gpu.items():
        if s.cmd.role in ("verifier", "buffer"):
            assert dockerfile_of(s.svc).name == "Dockerfile.cpu" and "deploy" not in s.svc
            continue
        assert dockerfile_of(s.svc).name == "Dockerfile.cuda"
        devices = s.svc["deploy"]["resources"]["reservations"]["devices"]
        ids = {i for d in devices for i in d["device_ids"]}
        assert all(d["capabilities"] == ["gpu"] for d in devices)
        assert not ids & seen, f"{name} shares GPUs with another service"
        seen |= ids
    assert services["learner-gpu"].cmd.launcher == "torchrun"
    for name, s in services.items():
        if not s.profiles and s.cmd:
            assert dockerfile_of(s.svc).name == "Dockerfile.cpu", f"default service {name} must use the CPU image"


def test_redis_and_volumes(compose: dict[str, Any], services: dict[str, Service]) -> None:
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert Service("redis", redis, compose).volume_targets()["/data"] in compose["volumes"]
    assert services["buffer"].svc["ports"], "the buffer dashboard port must be published"
    for name, s in services.items():
        for target, src in s.volume_targets().items():
            if not src.startswith((".", "/")):
                assert src in compose["volumes"], f"{name}: volume {src} not declared"
            elif src.endswith(".yaml"):
                assert (REPO / src).is_file(), f"{name}: {src} does not exist"
        assert "configs" not in s.svc, f"{name}: docker-compose v1 ignores `configs:`; bind-mount the file"
        df = dockerfile_of(s.svc)
        assert df is None or df.is_file(), f"{name}: {df} missing"


# --------------------------------------------------------------------------- host-network override

HOSTNET_KEYS = {"network_mode", "environment", "command", "healthcheck"}


def load_hostnet(env: dict[str, str] | None = None) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    return load_file(HOSTNET, env, used), used


def smoke_lane():
    spec = importlib.util.spec_from_file_location("compose_smoke", REPO / "benchmarks" / "compose_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_hostnet_override() -> None:
    """The lane's override: every CPU-demo container on the host network, every server bound to
    127.0.0.1 on its own port, every client pointed at those ports, nothing else changed."""
    override, used = load_hostnet()
    assert schema_errors(override) == []
    assert "networks" not in override
    base, _ = load_compose(with_default_override=False)
    assert not any(svc.get("ports") for svc in base["services"].values()), \
        "published ports belong in docker-compose.override.yml: host networking cannot publish them"
    merged = merge_override(base, override, HOSTNET_KEYS, HOSTNET.name)
    assert schema_errors(merged) == []
    demo = {n: Service(n, svc, merged) for n, svc in merged["services"].items() if not svc.get("profiles")}
    assert set(demo) == set(override["services"]), "every CPU-demo service needs network_mode: host"
    for name, s in demo.items():
        assert s.svc["network_mode"] == "host" and "networks" not in s.svc, name

    redis_cmd = demo["redis"].svc["command"]
    redis_port = int(redis_cmd[redis_cmd.index("--port") + 1])
    assert redis_cmd[redis_cmd.index("--bind") + 1] == "127.0.0.1"
    assert redis_cmd[redis_cmd.index("--dir") + 1] == "/data" and "/data" in demo["redis"].volume_targets()
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert f"-p {redis_port} ping" in demo["redis"].svc["healthcheck"]["test"][1]
    # the override replaces the whole command: the rest of it must stay the base file's
    base_cmd = base["services"]["redis"]["command"]
    assert [a for a in redis_cmd if a not in ("--bind", "127.0.0.1", "--port", str(redis_port))] == base_cmd

    servers = {n: s for n, s in demo.items() if s.cmd and s.cmd.role in SERVICE_PATHS}
    ports = {n: getattr(s.cfg, s.cmd.role).port for n, s in servers.items()}
    learner = demo["learner"].cfg.learner.weight_sync
    all_ports = [redis_port, *ports.values(), learner.master_port]
    assert len(set(all_ports)) == len(all_ports), f"ports collide on the shared host network: {all_ports}"
    assert not set(range(learner.master_port, learner.master_port + learner.port_span)) & set(all_ports[:-1])
    for name, s in demo.items():
        if s.cfg is None or s.cmd.role not in ("verifier", "buffer", "rollout", "learn"):
            continue
        cfg = s.cfg
        assert host_port(cfg.redis.url) == ("127.0.0.1", redis_port), name
        for target in ("verifier", "buffer"):
            assert host_port(getattr(cfg, target).base_url()) == ("127.0.0.1", ports[target]), f"{name}: {target}.url"
        if s.cmd.role in ("rollout", "learn"):
            assert (cfg.learner.weight_sync.master_addr, cfg.learner.weight_sync.master_port) == \
                ("127.0.0.1", learner.master_port), f"{name}: weight-sync rendezvous"
        if s.cmd.role in SERVICE_PATHS:
            assert getattr(cfg, s.cmd.role).host == "127.0.0.1", f"{name} must bind 127.0.0.1 only"
            assert probed_url(s) == f"http://127.0.0.1:{ports[name]}/healthz", f"{name}: health check"
        if s.cmd.role == "rollout":
            assert cfg.rollout.advertise_url == f"http://127.0.0.1:{ports[name]}" and cfg.rollout.server_id == name

    # the lane sets exactly the override's port variables, with the same defaults
    lane = smoke_lane()
    smoke_vars = {v for v in used if v.startswith("SMOKE_")}
    assert smoke_vars == set(lane.PORT_VARS)
    assert (redis_port, ports["verifier"], ports["buffer"], ports["rollout-1"], ports["rollout-2"], learner.master_port) == \
        tuple(lane.PORT_VARS[k] for k in ("SMOKE_REDIS_PORT", "SMOKE_VERIFIER_PORT", "SMOKE_BUFFER_PORT",
                                          "SMOKE_ROLLOUT_1_PORT", "SMOKE_ROLLOUT_2_PORT", "SMOKE_SYNC_PORT"))
    assert learner.port_span == lane.SYNC_PORT_SPAN
    moved, _ = load_hostnet({"SMOKE_BUFFER_PORT": "31200"})
    assert moved["services"]["buffer"]["environment"]["RETHINKER__BUFFER__PORT"] == "31200"


def test_hostnet_override_rejects_other_changes() -> None:
    """The merge model refuses an override that changes more than addresses and ports."""
    override, _ = load_hostnet()
    base, _ = load_compose(with_default_override=False)
    override["services"]["learner"]["volumes"] = ["/tmp:/workspace/runs"]
    with pytest.raises(AssertionError, match="changes {'volumes'}"):
        merge_override(base, override, HOSTNET_KEYS, HOSTNET.name)


@pytest.mark.parametrize("files", [[], ["docker-compose.yml", "deploy/docker/compose.hostnet.yml"]],
                         ids=["default", "hostnet"])
def test_compose_tool_accepts_the_files(files: list[str]) -> None:
    """docker-compose 1.29 / docker compose v2 itself parses the files (where one is installed)."""
    import shutil
    import subprocess

    tool = ["docker-compose"] if shutil.which("docker-compose") else None
    if tool is None and shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
            tool = ["docker", "compose"]
    if tool is None:
        pytest.skip("neither docker-compose nor docker compose is installed")
    args = [a for f in files for a in ("-f", f)]
    out = subprocess.run([*tool, *args, "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("SMOKE_", "REDIS_", "COMPOSE_"))})
    assert out.returncode == 0, out.stderr
