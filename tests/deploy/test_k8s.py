"""deploy/k8s, validated offline: no cluster here.

Each overlay is rendered with the real kustomize where one is installed (`kustomize build`, or
`kubectl kustomize`), else with tests/deploy/kustomize_render.py (the two are compared where both
run); every object is validated strictly against the official Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields rejected, for two Kubernetes releases) and with the
kubernetes client models + JSON field names (the RayService with a vendored schema of the fields we
use, its pod templates with the official schemas and the client models, its serveConfigV2 with Ray
Serve's schema), and then checked against the code: commands parse with the real CLI, each container's config
(mounted ConfigMap + env from ConfigMaps/Secrets/downward API) loads with the real config schema,
and ports, probes, Service DNS names, the weight-sync rendezvous and the replica counts agree with
that config.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from common.config import reveal
from deploy_checks import (
    DEPLOY,
    REPO,
    SERVICE_PATHS,
    WORKDIR,
    Command,
    config_sources,
    effective_config,
    host_port,
    parse_command,
)
from kustomize_render import render
from strict_models import k8s_errors, serve_config_errors

K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu-demo", "gpu")
RAYSERVICE_SCHEMA = Path(__file__).parent / "schemas" / "rayservice-v1-subset.schema.json"
# Secrets an overlay expects to exist in the cluster (created by hand), with the file listing their keys.
EXTERNAL_SECRETS = {"gpu": {"rethinker-secrets": K8S / "overlays" / "gpu" / "secrets.env.example"}}
IMAGES = {"vl-rethinker:cpu": "Dockerfile.cpu", "vl-rethinker:cuda": "Dockerfile.cuda"}
IMAGE_ENTRYPOINT = ["rethinker"]  # ENTRYPOINT of both images (checked in test_docker.py)


# --------------------------------------------------------------------------- rendered objects


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def real_kustomize() -> list[str] | None:
    """The real kustomize, if installed: `kustomize build`, or kubectl's built-in `kubectl kustomize`."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl")
    if kubectl and subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, timeout=60).returncode == 0:
        return [kubectl, "kustomize"]
    return None


def real_render(overlay: str) -> list[dict[str, Any]] | None:
    cmd = real_kustomize()
    if cmd is None:
        return None
    out = subprocess.run([*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)} {overlay}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects as the real kustomize renders them, or, where none is installed, as
    kustomize_render.py does (test_builtin_renderer_matches_kustomize keeps the two in line)."""
    if overlay not in _RENDERED:
        real = real_render(overlay)
        _RENDERED[overlay] = real if real is not None else render(K8S / "overlays" / overlay)
    return _RENDERED[overlay]


_HASHED = re.compile(r"\b(rethinker-(?:config|env|secrets))-[a-z0-9]{10}\b")


def _normalised(objs: list[dict[str, Any]]) -> list[Any]:
    """Objects with the generated names' hash suffix cut and every list of named items sorted (a
    strategic-merge patch may put new list items first or last: the order means nothing there)."""

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            items = [norm(x) for x in v]
            if items and all(isinstance(x, dict) for x in items):
                key = next((k for k in ("name", "mountPath", "containerPort", "key") if all(k in x for x in items)), None)
                if key is not None:
                    items.sort(key=lambda x: str(x[key]))
            return items
        return _HASHED.sub(r"\1-HASH", v) if isinstance(v, str) else v

    return sorted((norm(o) for o in objs), key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_builtin_renderer_matches_kustomize(overlay: str) -> None:
    """kustomize_render.py renders what the real kustomize renders (where one is installed)."""
    real = real_render(overlay)
    if real is None:
        pytest.skip("no kustomize and no kubectl with kustomize on this machine")
    assert _normalised(render(K8S / "overlays" / overlay)) == _normalised(real)


def objects_of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def configmap_data(objs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return one(objs, "ConfigMap", name).get("data", {})


def secret_data(overlay: str, objs: list[dict[str, Any]], name: str) -> dict[str, str]:
    hits = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == name]
    if hits:
        s = hits[0]
        return {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()} | dict(s.get("stringData", {}))
    external = EXTERNAL_SECRETS.get(overlay, {})
    assert name in external, f"{overlay}: Secret {name} is neither rendered nor a documented external secret"
    return env_file(external[name])


class Pod:
    """A pod template of a workload, with an example pod name (for the downward API)."""

    def __init__(self, owner: dict[str, Any], template: dict[str, Any], pod_name: str, ray: bool = False) -> None:
        self.owner, self.template, self.pod_name, self.ray = owner, template, pod_name, ray
        self.spec = template["spec"]
        self.labels = template.get("metadata", {}).get("labels", {})

    @property
    def where(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}"

    def containers(self, init: bool = True) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers", []) if init else []) + list(self.spec["containers"])

    def volume(self, name: str) -> dict[str, Any]:
        for v in self.spec.get("volumes", []):
            if v["name"] == name:
                return v
        if self.owner["kind"] == "StatefulSet":
            for t in self.owner["spec"].get("volumeClaimTemplates", []):
                if t["metadata"]["name"] == name:
                    return {"name": name, "volumeClaimTemplate": t}
        raise AssertionError(f"{self.where}: volume {name} is mounted but not declared")


def pods(objs: list[dict[str, Any]]) -> Iterator[Pod]:
    for o in objs:
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment":
            yield Pod(o, o["spec"]["template"], f"{name}-5d8c7b9f4-x7k2p")
        elif o["kind"] == "StatefulSet":
            yield Pod(o, o["spec"]["template"], f"{name}-0")
        elif o["kind"] == "Job":
            yield Pod(o, o["spec"]["template"], f"{name}-0-q8w4n")
        elif o["kind"] == "RayService":
            rc = o["spec"]["rayClusterConfig"]
            yield Pod(o, rc["headGroupSpec"]["template"], f"{name}-raycluster-abcde-head-x7k2p", ray=True)
            for g in rc.get("workerGroupSpecs", []):
                yield Pod(o, g["template"], f"{name}-raycluster-abcde-{g['groupName']}-worker-x7k2p", ray=True)


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values, command and args ($$ escapes)."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(overlay: str, objs: list[dict[str, Any]], pod: Pod, c: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            data = configmap_data(objs, src["configMapRef"]["name"])
        else:
            data = secret_data(overlay, objs, src["secretRef"]["name"])
        env.update({src.get("prefix", "") + k: v for k, v in data.items()})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod.pod_name, "metadata.namespace": pod.owner["metadata"].get("namespace", "default")}[field]
        elif "secretKeyRef" in ref:
            env[e["name"]] = secret_data(overlay, objs, ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[e["name"]] = configmap_data(objs, ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
        else:
            raise AssertionError(f"{pod.where}: unsupported valueFrom {ref}")
    return env


def mounted_file(objs: list[dict[str, Any]], pod: Pod, c: dict[str, Any], path: str) -> str:
    """The content of a ConfigMap-backed file at ``path`` inside container ``c``."""
    for m in c.get("volumeMounts", []):
        mount = PurePosixPath(m["mountPath"])
        p = PurePosixPath(path)
        if p == mount or mount in p.parents:
            vol = pod.volume(m["name"])
            assert "configMap" in vol, f"{pod.where}: {path} is on volume {m['name']}, not a ConfigMap"
            rel = str(p.relative_to(mount)) if p != mount else ""
            key = m.get("subPath") or rel
            items = {i["path"]: i["key"] for i in vol["configMap"].get("items", [])}
            data = configmap_data(objs, vol["configMap"]["name"])
            key = items.get(key, key) if items else key
            assert key in data, f"{pod.where}: {path} -> ConfigMap {vol['configMap']['name']} has no key {key!r}"
            return data[key]
    raise AssertionError(f"{pod.where}/{c['name']}: nothing is mounted at {path}")


class Proc:
    """One rethinker container: its parsed command and effective config."""

    def __init__(self, overlay: str, objs: list[dict[str, Any]], pod: Pod, c: dict[str, Any]) -> None:
        self.pod, self.c = pod, c
        self.where = f"{overlay}: {pod.where}/{c['name']}"
        assert c.get("workingDir", WORKDIR) == WORKDIR, f"{self.where}: the configs' relative paths need {WORKDIR}"
        self.env = container_env(overlay, objs, pod, c)
        argv = [expand(a, self.env) for a in (c.get("command") or IMAGE_ENTRYPOINT) + c.get("args", [])]
        self.cmd: Command = parse_command(argv)
        self.cfg = None
        if self.cmd.config is not None:
            text = mounted_file(objs, pod, c, self.cmd.config)
            self.cfg = effective_config(text, self.cmd.overrides, self.env, self.where)

    def port(self, name_or_number: Any) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for p in self.c.get("ports", []):
            if p.get("name") == name_or_number:
                return p["containerPort"]
        raise AssertionError(f"{self.where}: no container port named {name_or_number}")


def procs(overlay: str) -> list[Proc]:
    objs = rendered(overlay)
    out = []
    for pod in pods(objs):
        if pod.ray:
            continue  # KubeRay runs `ray start` in Ray pods; see test_rayservice
        for c in pod.containers():
            if c["image"] in IMAGES:
                out.append(Proc(overlay, objs, pod, c))
    return out


def selects(service: dict[str, Any], pod: Pod) -> bool:
    sel = service["spec"].get("selector") or {}
    return bool(sel) and all(pod.labels.get(k) == v for k, v in sel.items())


# --------------------------------------------------------------------------- tests: validity


def test_every_object_validates_strictly(overlay: str) -> None:
    objs = rendered(overlay)
    assert objs, overlay
    problems = []
    for o in objs:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "RayService":
            problems += [f"{where}: {e}" for e in rayservice_errors(o)]
        else:
            problems += [f"{where}: {e}" for e in k8s_errors(o)]
    assert problems == []


# Kubernetes releases whose official OpenAPI schemas (kubernetes-validate's bundled copies, the
# schemas kubeconform uses) every object must satisfy: an older supported release and the newest.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def openapi_errors(obj: dict[str, Any]) -> list[str]:
    """Strict validation against the official schemas of each release in K8S_VERSIONS (unknown
    fields rejected).  A RayService (a CRD) is checked through its pod templates, each as a v1
    PodTemplate."""
    import kubernetes_validate

    if obj["kind"] == "RayService":
        cluster = obj["spec"]["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
        docs = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": g["template"]}
                for name, g in groups]
    else:
        docs = [obj]
    errors = []
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"k8s {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
    return errors


def test_every_object_validates_against_openapi_schemas(overlay: str) -> None:
    problems = []
    for o in rendered(overlay):
        problems += [f"{o['kind']}/{o['metadata']['name']}: {e}" for e in openapi_errors(o)]
    assert problems == []


def test_openapi_validation_bites() -> None:
    dep = json.loads(json.dumps(one(rendered("cpu-demo"), "Deployment", "buffer")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    assert any("paht" in e for e in openapi_errors(dep))
    dep = json.loads(json.dumps(one(rendered("cpu-demo"), "Deployment", "buffer")))
    dep["spec"]["replicas"] = "two"
    assert any("replicas" in e or "two" in e for e in openapi_errors(dep))
    rs = json.loads(json.dumps(one(rendered("gpu"), "RayService", "verifier")))
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "x"
    assert any("imagePullPolcy" in e for e in openapi_errors(rs))


def test_strict_validation_bites() -> None:
    """A misspelt field, a snake_case field and a wrong type are all caught."""
    dep = json.loads(json.dumps(one(rendered("cpu-demo"), "Deployment", "buffer")))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["readinessProbe"]["httpGet"]["paht"] = "/x"
    c["ports"][0]["container_port"] = 8200
    c["resources"]["limits"]["memory"] = 4
    errs = " | ".join(k8s_errors(dep))
    assert "paht" in errs and "container_port" in errs and "memory" in errs
    rs = json.loads(json.dumps(one(rendered("gpu"), "RayService", "verifier")))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "x"
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    rs["spec"]["serveConfigV2"] = rs["spec"]["serveConfigV2"].replace("route_prefix", "route_prefx")
    errs = " | ".join(rayservice_errors(rs))
    assert "imagePullPolcy" in errs and "rayStartParam" in errs and "route_prefx" in errs


def _x_models(schema: dict[str, Any], data: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, kubernetes model name, value) for every x-kubernetes-model node present in data."""
    if "x-kubernetes-model" in schema:
        yield path, schema["x-kubernetes-model"], data
        return
    if isinstance(data, dict):
        for k, sub in schema.get("properties", {}).items():
            if k in data:
                yield from _x_models(sub, data[k], f"{path}.{k}")
    if isinstance(data, list) and "items" in schema:
        for i, v in enumerate(data):
            yield from _x_models(schema["items"], v, f"{path}[{i}]")


def rayservice_errors(obj: dict[str, Any]) -> list[str]:
    from kubernetes import client

    schema = json.loads(RAYSERVICE_SCHEMA.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(obj)]
    for path, model_name, value in _x_models(schema, obj):
        model = getattr(client, model_name)
        errors += [f"{path}: {e}" for e in k8s_errors(value, model)]
    serve = yaml.safe_load(obj["spec"].get("serveConfigV2", "")) or {}
    errors += [f"serveConfigV2: {e}" for e in serve_config_errors(serve)]
    return errors


def test_config_copies_equal_sources() -> None:
    sources = config_sources()
    copies = sorted(K8S.rglob("config/*.yaml"))
    assert copies, "the overlays' config copies are missing"
    for copy in copies:
        assert copy.name in sources, f"{copy} is not a copy of a configs/ file"
        assert copy.read_bytes() == sources[copy.name].read_bytes(), f"{copy} differs from configs/{copy.name}: copy it again"


def test_references_resolve(overlay: str) -> None:
    objs = rendered(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for pod in pods(objs):
        for v in pod.spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, f"{pod.where}: ConfigMap {v['configMap']['name']}"
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
        for c in pod.containers():
            for m in c.get("volumeMounts", []):
                pod.volume(m["name"])
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names, f"{pod.where}: {src}"
                else:
                    secret_data(overlay, objs, src["secretRef"]["name"])
    services = objects_of(objs, "Service")
    all_pods = list(pods(objs))
    for svc in services:
        if svc["metadata"]["name"] == "verifier" and any(o["kind"] == "RayService" for o in objs):
            pytest.fail("the plain verifier Service must be deleted when the RayService creates it")
        matched = [p for p in all_pods if selects(svc, p)]
        assert matched, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for p in matched:
                cports = [cp for c in p.containers(init=False) for cp in c.get("ports", [])]
                assert any(cp.get("name") == target or cp["containerPort"] == target for cp in cports), (
                    f"Service {svc['metadata']['name']} targets {target!r}, not a port of {p.where}")
                if not isinstance(target, str):
                    continue
                number = next(cp["containerPort"] for cp in cports if cp.get("name") == target)
                assert number == port["port"], f"Service {svc['metadata']['name']}: port {port['port']} -> {number}"
    for sts in objects_of(objs, "StatefulSet"):
        headless = one(objs, "Service", sts["spec"]["serviceName"])
        assert headless["spec"].get("clusterIP") == "None", f"{sts['metadata']['name']}: serviceName must be headless"


# --------------------------------------------------------------------------- tests: agreement with the code


def test_commands_parse(overlay: str) -> None:
    roles = sorted(p.cmd.role for p in procs(overlay))
    expected = ["buffer", "learn", "rollout"] + (["verifier"] if overlay == "cpu-demo" else [])
    if overlay == "cpu-demo":
        expected += ["data", "data", "sft-warmup", "sft-warmup", "tiny-model", "tiny-model"]
    assert roles == sorted(expected)


def test_containers_agree_with_config(overlay: str) -> None:
    objs = rendered(overlay)
    ps = procs(overlay)
    by_role: dict[str, list[Proc]] = {}
    for p in ps:
        by_role.setdefault(p.cmd.role, []).append(p)
    learner = by_role["learn"][0]
    services = {s["metadata"]["name"]: s for s in objects_of(objs, "Service")}
    ray = objects_of(objs, "RayService")

    def service_port_for(url: str, role: str) -> None:
        host, port = host_port(url)
        assert host in services, f"{role}.url host {host} is not a Service"
        svc = services[host]
        assert port in [p["port"] for p in svc["spec"]["ports"]], f"Service {host} has no port {port}"
        matched = [p for p in ps if p.cmd.role == role and selects(svc, p.pod)]
        if not matched:
            raise AssertionError(f"Service {host} selects no `{role}` container")

    for p in ps:
        cfg = p.cfg
        if cfg is None or p.cmd.role not in ("verifier", "buffer", "rollout", "learn"):
            continue  # init jobs (sft-warmup) talk to no service
        # clients reach the services through Service DNS names and the configured ports
        if ray:
            rs = ray[0]
            assert host_port(cfg.verifier.base_url()) == (rs["spec"]["serveService"]["metadata"]["name"], cfg.verifier.port)
        else:
            service_port_for(cfg.verifier.base_url(), "verifier")
        service_port_for(cfg.buffer.base_url(), "buffer")
        host, port = host_port(cfg.redis.url)
        redis_svc = services[host]
        redis_pod = next(q for q in pods(objs) if selects(redis_svc, q))
        rc = redis_pod.spec["containers"][0]
        assert port in [cp["containerPort"] for cp in rc["ports"]]
        redis_env = container_env(overlay, objs, redis_pod, rc)
        redis_args = [expand(a, redis_env) for a in rc["args"]]
        assert cfg.redis.password and reveal(cfg.redis.password) == redis_args[redis_args.index("--requirepass") + 1], p.where
        assert cfg.buffer.admin_token and cfg.learner.weight_sync.token, f"{p.where}: secrets missing"
        assert cfg.verifier.api_token and cfg.rollout.api_token, f"{p.where}: API tokens missing"
        for section in ("verifier", "rollout"):
            assert reveal(getattr(cfg, section).api_token) == reveal(getattr(learner.cfg, section).api_token)
        # weight-sync rendezvous: <learner pod hostname>.<headless Service> of the learner Job
        pod_host, _, subdomain = cfg.learner.weight_sync.master_addr.partition(".")
        job = learner.pod.owner
        assert job["kind"] == "Job" and job["spec"].get("completionMode") == "Indexed", "learner must be an Indexed Job"
        assert learner.pod.spec.get("subdomain") == subdomain and pod_host == f"{job['metadata']['name']}-0", (
            f"{p.where}: master_addr {cfg.learner.weight_sync.master_addr} is not the learner pod's DNS name")
        svc = services[subdomain]
        assert svc["spec"].get("clusterIP") == "None" and selects(svc, learner.pod)
        assert cfg.learner.weight_sync.master_port in [q["port"] for q in svc["spec"]["ports"]]
        assert cfg.learner.weight_sync.master_port in [learner.port(q["targetPort"]) for q in svc["spec"]["ports"]]
        assert reveal(cfg.learner.weight_sync.token) == reveal(learner.cfg.learner.weight_sync.token)

        role = p.cmd.role
        if role in SERVICE_PATHS:
            port_cfg = getattr(cfg, role).port
            assert getattr(cfg, role).host == "0.0.0.0", f"{p.where}: must bind 0.0.0.0"
            assert p.port("http") == port_cfg, f"{p.where}: containerPort {p.port('http')} != {role}.port {port_cfg}"
            probe = p.c["readinessProbe"]["httpGet"]
            assert probe["path"] in SERVICE_PATHS[role] and p.port(probe["port"]) == port_cfg, f"{p.where}: readiness {probe}"
            for kind in ("livenessProbe", "startupProbe"):
                pr = p.c.get(kind)
                if pr and "httpGet" in pr:
                    assert pr["httpGet"]["path"] in SERVICE_PATHS[role] and p.port(pr["httpGet"]["port"]) == port_cfg
                elif pr:
                    assert p.port(pr["tcpSocket"]["port"]) == port_cfg
        if role == "rollout":
            sts = p.pod.owner
            host, port = host_port(cfg.rollout.advertise_url)
            assert cfg.rollout.server_id == p.pod.pod_name, f"{p.where}: server_id from the pod name"
            assert host == f"{p.pod.pod_name}.{sts['spec']['serviceName']}" and port == cfg.rollout.port, cfg.rollout.advertise_url
            assert sts["spec"]["replicas"] == cfg.launcher.rollout_servers, "one rollout pod per launcher.rollout_servers"
            assert p.c["readinessProbe"]["httpGet"]["path"] == "/healthz"
        if role in ("rollout", "learn"):
            mounts = {m["mountPath"]: m["name"] for m in p.c.get("volumeMounts", [])}
            claim = p.pod.volume(mounts[f"{WORKDIR}/runs"]).get("persistentVolumeClaim", {}).get("claimName")
            assert claim == "rethinker-runs", f"{p.where}: the run dir (published checkpoints) must be the shared PVC"


def test_cpu_demo_builds_model_and_data() -> None:
    """Each rollout/learner pod writes the model and data it loads with init containers, in order,
    on the volume its main container reads: tiny-model -> synth-data -> sft-warmup -> main."""
    ps = procs("cpu-demo")
    mains = [p for p in ps if p.cmd.role in ("learn", "rollout") and p.c in p.pod.spec["containers"]]
    assert sorted(p.cmd.role for p in mains) == ["learn", "rollout"]
    for main in mains:
        inits = [p for p in ps if p.pod is main.pod and p.c in main.pod.spec.get("initContainers", [])]
        assert [p.cmd.role for p in inits] == ["tiny-model", "data", "sft-warmup"], main.where
        build, synth, warm = inits
        cache = {m["mountPath"]: m["name"] for m in main.c["volumeMounts"]}[f"{WORKDIR}/.cache"]
        for p in inits:
            assert {m["mountPath"]: m["name"] for m in p.c["volumeMounts"]}[f"{WORKDIR}/.cache"] == cache
        assert PurePosixPath(build.cmd.args.dir) == PurePosixPath(WORKDIR) / warm.cfg.model.path
        out = PurePosixPath(synth.cmd.args.out)
        for cfg in (warm.cfg, main.cfg):
            assert PurePosixPath(WORKDIR) / cfg.data.train_path == out / "train.parquet"
            assert PurePosixPath(WORKDIR) / cfg.data.eval_path == out / "eval.parquet"
        assert PurePosixPath(warm.cmd.args.out) == PurePosixPath(WORKDIR) / main.cfg.model.path, (
            f"{main.where} must start from the warmed-up model")
        assert main.cfg.rollout.engine == "hf"


def test_gpu_overlay_resources() -> None:
    objs = rendered("gpu")
    ps = procs("gpu")
    rollout = next(p for p in ps if p.cmd.role == "rollout")
    learner = next(p for p in ps if p.cmd.role == "learn")
    assert rollout.cfg.rollout.engine == "vllm" and learner.cfg.learner.weight_sync.backend == "nccl"
    assert rollout.c["image"] == learner.c["image"] == "vl-rethinker:cuda"
    for p, gpus in ((rollout, rollout.cfg.rollout.tensor_parallel_size), (learner, 8)):
        res = p.c["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(gpus), p.where
        assert any(t.get("key") == "nvidia.com/gpu" for t in p.pod.spec.get("tolerations", []))
    assert learner.cmd.launcher == "torchrun"
    assert not [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "verifier"]
    assert one(objs, "PersistentVolumeClaim", "rethinker-runs")["spec"]["accessModes"] == ["ReadWriteMany"]
    # the ViRL39K parquet lives on the data volume, where data.train_path points
    mounts = {m["mountPath"]: m["name"] for m in learner.c["volumeMounts"]}
    assert (PurePosixPath(WORKDIR) / learner.cfg.data.train_path).is_relative_to(f"{WORKDIR}/data")
    assert learner.pod.volume(mounts[f"{WORKDIR}/data"])["persistentVolumeClaim"]["claimName"] == "training-data"


def test_redis_statefulset(overlay: str) -> None:
    objs = rendered(overlay)
    sts = one(objs, "StatefulSet", "redis")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == data_dir)
    assert mount["name"] in [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]], "AOF must be on a PVC"
    assert c["readinessProbe"] and c["livenessProbe"]


def test_rayservice() -> None:
    """The RayService serves deploy/ray/serve-config.yaml on the config's port, sized for its replicas."""
    from importlib.metadata import version

    objs = rendered("gpu")
    rs = one(objs, "RayService", "verifier")
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert serve == yaml.safe_load((DEPLOY / "ray" / "serve-config.yaml").read_text())
    rc = rs["spec"]["rayClusterConfig"]
    assert rc["rayVersion"] == version("ray"), "rayVersion must be the Ray the image installs"
    assert rc["enableInTreeAutoscaling"] is True
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_pod = next(p for p in pods(objs) if p.ray)
    env = container_env("gpu", objs, head_pod, head)
    app = serve["applications"][0]
    cfg = effective_config(mounted_file(objs, head_pod, head, app["args"]["config"]), [], env, "RayService head")
    assert serve["http_options"]["port"] == cfg.verifier.port
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == cfg.verifier.port
    assert [p["port"] for p in rs["spec"]["serveService"]["spec"]["ports"]] == [cfg.verifier.port]
    assert "deployments" not in app, "replicas and autoscaling come from the rethinker config, not from overrides"
    # enough worker pods for ray_max_replicas replicas of ray_replica_cpus each; the head takes none
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for g in rc["workerGroupSpecs"]:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"] == res["requests"], "KubeRay sizes Ray from the limits: keep requests equal"
        per_pod = int(float(res["limits"]["cpu"]) // cfg.verifier.ray_replica_cpus)
        assert per_pod >= 1 and g["maxReplicas"] * per_pod >= cfg.verifier.ray_max_replicas
        assert g["minReplicas"] * per_pod >= cfg.verifier.ray_min_replicas
    for p in (q for q in pods(objs) if q.ray):
        for c in p.containers():
            assert c["image"] in IMAGES
            effective_config(mounted_file(objs, p, c, app["args"]["config"]), [], container_env("gpu", objs, p, c), p.where)


def test_external_secret_documented() -> None:
    demo = env_file(K8S / "overlays" / "cpu-demo" / "secrets.env")
    for overlay, secrets in EXTERNAL_SECRETS.items():
        for name, path in secrets.items():
            keys = set(env_file(path))
            assert set(demo) <= keys, f"{path} must list every key of the demo secret"
            assert name in (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
            assert path.name in (REPO / "docs" / "deployment.md").read_text()
