"""A small kustomize renderer for the subset of kustomize that deploy/k8s uses, for machines without kustomize.

It renders a kustomization folder to the list of objects ``kustomize build`` would output, for
exactly these fields, and refuses any other field (``KustomizeError``) so that a manifest can never
silently rely on a feature that is not rendered here:

- ``resources``: YAML files (multi-document) and folders holding a kustomization (rendered
  recursively; their transformer configurations are merged upward, as kustomize does);
- ``configMapGenerator`` / ``secretGenerator`` with ``files`` (``key=path`` or ``path``),
  ``literals`` (``K=V``), ``envs`` (``K=V`` lines), ``type`` (secrets) and ``options``; behaviour
  ``create`` only; a content-hash suffix is appended to the name unless ``disableNameSuffixHash``
  (modelled on kustomize's hasher: sha256 of the Go-style JSON of kind/name/data, 10 hex digits
  with 0,1,3,a,e mapped to g,h,k,m,t; the suffix differs from the one kubectl 1.32's kustomize
  v5.5.0 writes, which test_k8s.py's comparison leaves out; what matters here is that it changes
  with the content and that references follow it);
- ``generatorOptions``: ``disableNameSuffixHash``, ``labels``, ``annotations``;
- ``patches``: strategic-merge patches from ``path`` or inline ``patch`` (no ``target``), matched by
  apiVersion group/kind/name; ``$patch: delete`` of an object or of a list item; lists merge by
  Kubernetes' patchMergeKey for the built-in kinds (containers/env/volumes by name, volumeMounts by
  mountPath, container ports by containerPort, Service ports by port) and are replaced otherwise,
  and always for custom resources (kustomize has no schema for them);
- ``namespace``: set on every namespaced object;
- ``configurations``: files with ``nameReference`` entries (how custom resources refer to
  ConfigMaps/Secrets), added to the built-in references of pods, Deployments, StatefulSets, Jobs;
- name references: every reference to a generated ConfigMap/Secret by its original name is
  rewritten to the suffixed name, at the generator's level and again at every level above it (so
  references from sibling folders are fixed too, as kustomize does with its resources' original
  names).

Its own behaviour is tested in tests/deploy/test_kustomize_render.py, and its output is compared
with the real kustomize's in tests/deploy/test_k8s.py wherever one is installed (the tests then
check the real kustomize's output).  This module is for offline validation only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "configurations",
}
GENERATOR_FIELDS = {"name", "behavior", "files", "literals", "envs", "options", "type"}
GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels", "annotations"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "IngressClass"}

_POD_SPEC_OF = {
    "Pod": "spec",
    "Deployment": "spec/template/spec",
    "StatefulSet": "spec/template/spec",
    "DaemonSet": "spec/template/spec",
    "ReplicaSet": "spec/template/spec",
    "Job": "spec/template/spec",
    "CronJob": "spec/jobTemplate/spec/template/spec",
}
_CONFIGMAP_REFS = (
    "volumes/configMap/name",
    "volumes/projected/sources/configMap/name",
    "containers/env/valueFrom/configMapKeyRef/name",
    "initContainers/env/valueFrom/configMapKeyRef/name",
    "containers/envFrom/configMapRef/name",
    "initContainers/envFrom/configMapRef/name",
)
_SECRET_REFS = (
    "volumes/secret/secretName",
    "volumes/projected/sources/secret/name",
    "containers/env/valueFrom/secretKeyRef/name",
    "initContainers/env/valueFrom/secretKeyRef/name",
    "containers/envFrom/secretRef/name",
    "initContainers/envFrom/secretRef/name",
    "imagePullSecrets/name",
)


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render (unsupported field, missing file, bad patch)."""


@dataclass(frozen=True)
class NameRef:
    """Objects of ``kind`` are referred to by name at ``path`` in objects of ``referrer_kind``."""

    kind: str
    referrer_kind: str
    path: str


def _builtin_name_refs() -> list[NameRef]:
    refs = []
    for referrer, prefix in _POD_SPEC_OF.items():
        refs += [NameRef("ConfigMap", referrer, f"{prefix}/{p}") for p in _CONFIGMAP_REFS]
        refs += [NameRef("Secret", referrer, f"{prefix}/{p}") for p in _SECRET_REFS]
    return refs


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    name_refs: list[NameRef] = field(default_factory=list)
    # (kind, original name, suffixed name) of every generated object in scope: a level fixes the
    # references of all its objects, including those of sibling folders, as kustomize does.
    renames: list[tuple[str, str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def load_documents(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KustomizeError(f"{path}: no such file")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: every document must be an object with apiVersion and kind")
    return docs


def api_group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def is_builtin(obj: dict[str, Any]) -> bool:
    group = api_group(obj["apiVersion"])
    return group in {"", "apps", "batch", "autoscaling", "policy"} or group.endswith(".k8s.io")


def obj_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    return api_group(obj["apiVersion"]), obj["kind"], obj.get("metadata", {}).get("name", "")


def _go_json(value: Any) -> str:
    """``json.Marshal`` of Go: sorted keys, no spaces, HTML characters escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def content_hash(obj: dict[str, Any]) -> str:
    """kustomize's name-suffix hash of a ConfigMap or Secret (computed from the unsuffixed name)."""
    name = obj["metadata"]["name"]
    if obj["kind"] == "ConfigMap":
        enc: dict[str, Any] = {"kind": "ConfigMap", "name": name, "data": obj.get("data", {})}
        if obj.get("binaryData"):
            enc["binaryData"] = obj["binaryData"]
    elif obj["kind"] == "Secret":
        enc = {"kind": "Secret", "type": obj.get("type", "Opaque"), "name": name, "data": obj.get("data", {})}
    else:
        raise KustomizeError(f"cannot hash a {obj['kind']}")
    digest = hashlib.sha256(_go_json(enc).encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _parse_kv(line: str, where: str) -> tuple[str, str]:
    if "=" not in line:
        raise KustomizeError(f"{where}: {line!r} is not KEY=VALUE")
    key, _, value = line.partition("=")
    key = key.strip()
    if not key:
        raise KustomizeError(f"{where}: empty key in {line!r}")
    return key, value


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise KustomizeError(f"{path}: no such env file")
    out = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        k, v = _parse_kv(line, f"{path}:{n}")
        out[k] = v
    return out


def _inside(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if root.resolve() not in (p, *p.parents):
        raise KustomizeError(f"{rel}: kustomize refuses files outside the kustomization root {root}")
    return p


def _generate(root: Path, kind: str, spec: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    unknown = set(spec) - GENERATOR_FIELDS
    if unknown:
        raise KustomizeError(f"{root}: {kind} generator fields not supported here: {sorted(unknown)}")
    if spec.get("behavior", "create") != "create":
        raise KustomizeError(f"{root}: generator behavior {spec['behavior']!r} not supported here")
    if "name" not in spec:
        raise KustomizeError(f"{root}: a {kind} generator needs a name")
    if kind == "ConfigMap" and "type" in spec:
        raise KustomizeError(f"{root}: configMapGenerator has no 'type'")
    data: dict[str, str] = {}

    def put(key: str, value: str, where: str) -> None:
        if key in data:
            raise KustomizeError(f"{where}: duplicate key {key!r} in {kind} {spec['name']}")
        data[key] = value

    for env in spec.get("envs", []):
        for k, v in _read_env_file(_inside(root, env)).items():
            put(k, v, env)
    for lit in spec.get("literals", []):
        k, v = _parse_kv(lit, f"{root} literals")
        put(k, v, "literals")
    for f in spec.get("files", []):
        key, _, rel = f.partition("=") if "=" in f else (Path(f).name, "", f)
        path = _inside(root, rel)
        if not path.is_file():
            raise KustomizeError(f"{root}: file {rel!r} of {kind} {spec['name']} does not exist")
        put(key, path.read_text(), rel)
    opts = {**options, **spec.get("options", {})}
    unknown = set(opts) - GENERATOR_OPTIONS
    if unknown:
        raise KustomizeError(f"{root}: generator options not supported here: {sorted(unknown)}")
    meta: dict[str, Any] = {"name": spec["name"]}
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    if opts.get("annotations"):
        meta["annotations"] = dict(opts["annotations"])
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj, not opts.get("disableNameSuffixHash", False)


# --------------------------------------------------------------------------- strategic merge patch


def _merge_key(builtin: bool, kind: str, path: tuple[str, ...]) -> str | None:
    if not builtin or not path:
        return None
    last = path[-1]
    if last in ("containers", "initContainers", "ephemeralContainers", "env", "volumes", "imagePullSecrets"):
        return "name"
    if last == "volumeMounts":
        return "mountPath"
    if last == "ports":
        if kind == "Service" and path == ("spec", "ports"):
            return "port"
        if len(path) >= 2 and path[-2] in ("containers", "initContainers", "ephemeralContainers"):
            return "containerPort"
    return None


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_map(orig: dict[str, Any], patch: dict[str, Any], builtin: bool, kind: str, path: tuple[str, ...]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    for key in patch:
        if key.startswith("$") and key != "$patch":
            raise KustomizeError(f"patch directive {key!r} at {'/'.join(path)} not supported here")
    if directive not in (None, "merge"):
        raise KustomizeError(f"$patch: {directive} at {'/'.join(path) or '<root>'} not supported here")
    out = copy.deepcopy(orig)
    for key, pv in patch.items():
        if key == "$patch":
            continue
        if pv is None:
            out.pop(key, None)
            continue
        ov = out.get(key)
        sub = (*path, key)
        if isinstance(pv, dict) and isinstance(ov, dict):
            out[key] = _merge_map(ov, pv, builtin, kind, sub)
        elif isinstance(pv, list) and isinstance(ov, list):
            out[key] = _merge_list(ov, pv, builtin, kind, sub)
        else:
            out[key] = _strip_directives(pv)
    return out


def _merge_list(orig: list[Any], patch: list[Any], builtin: bool, kind: str, path: tuple[str, ...]) -> list[Any]:
    key = _merge_key(builtin, kind, path)
    if key is None:
        if any(isinstance(p, dict) and "$patch" in p for p in patch):
            raise KustomizeError(f"$patch in the list {'/'.join(path)}, which has no merge key")
        return _strip_directives(patch)
    out = copy.deepcopy(orig)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"item of {'/'.join(path)} lacks its merge key {key!r}: {item!r}")
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = _merge_map(out[idx], item, builtin, kind, path)
    return out


def apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if not isinstance(patch, dict) or "kind" not in patch or "apiVersion" not in patch or "name" not in patch.get("metadata", {}):
        raise KustomizeError(f"{where}: a strategic-merge patch needs apiVersion, kind and metadata.name")
    target = obj_id(patch)
    hits = [i for i, o in enumerate(objects) if obj_id(o) == target]
    if len(hits) != 1:
        raise KustomizeError(f"{where}: found {len(hits)} targets for patch {target} (need exactly one)")
    i = hits[0]
    if patch.get("$patch") == "delete":
        return objects[:i] + objects[i + 1 :]
    merged = _merge_map(objects[i], patch, is_builtin(objects[i]), objects[i]["kind"], ())
    return objects[:i] + [merged] + objects[i + 1 :]


# --------------------------------------------------------------------------- name references


def _walk_refs(node: Any, parts: list[str], old: str, new: str) -> int:
    if isinstance(node, list):
        return sum(_walk_refs(n, parts, old, new) for n in node)
    if not isinstance(node, dict) or not parts:
        return 0
    head, rest = parts[0], parts[1:]
    if head not in node:
        return 0
    if not rest:
        if node[head] == old:
            node[head] = new
            return 1
        return 0
    return _walk_refs(node[head], rest, old, new)


def _load_configurations(path: Path) -> list[NameRef]:
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"nameReference"}
    if unknown:
        raise KustomizeError(f"{path}: transformer configurations other than nameReference not supported: {sorted(unknown)}")
    refs = []
    for entry in data.get("nameReference", []):
        for fs in entry.get("fieldSpecs", []):
            if "kind" not in fs or "path" not in fs:
                raise KustomizeError(f"{path}: each fieldSpec needs kind and path")
            refs.append(NameRef(entry["kind"], fs["kind"], fs["path"].replace("[]", "")))
    return refs


# --------------------------------------------------------------------------- render


def _kustomization_file(root: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).is_file():
            return root / name
    raise KustomizeError(f"{root}: no kustomization.yaml")


def _render(root: Path, stack: tuple[Path, ...]) -> Rendered:
    root = root.resolve()
    if root in stack:
        raise KustomizeError(f"{root}: cycle in resources")
    kfile = _kustomization_file(root)
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: fields not supported by this renderer: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind {k.get('kind')!r} not supported here (components are not)")

    objects: list[dict[str, Any]] = []
    refs: list[NameRef] = []
    renames: list[tuple[str, str, str]] = []
    for entry in k.get("resources", []):
        p = (root / entry).resolve()
        if p.is_dir():
            sub = _render(p, (*stack, root))
            objects += sub.objects
            refs += [r for r in sub.name_refs if r not in refs]
            renames += sub.renames
        else:
            objects += load_documents(p)
    for conf in k.get("configurations", []):
        refs += [r for r in _load_configurations(_inside(root, conf)) if r not in refs]

    options = k.get("generatorOptions", {})
    generated: list[tuple[dict[str, Any], bool]] = []
    for spec in k.get("configMapGenerator", []):
        generated.append(_generate(root, "ConfigMap", spec, options))
    for spec in k.get("secretGenerator", []):
        generated.append(_generate(root, "Secret", spec, options))
    objects += [g for g, _ in generated]

    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        if obj_id(o) in seen:
            raise KustomizeError(f"{kfile}: {obj_id(o)} defined twice")
        seen.add(obj_id(o))

    for n, p in enumerate(k.get("patches", [])):
        if "target" in p or "options" in p:
            raise KustomizeError(f"{kfile}: patches[{n}]: target/options not supported here (use SMP with metadata)")
        if ("path" in p) == ("patch" in p):
            raise KustomizeError(f"{kfile}: patches[{n}] needs exactly one of path, patch")
        docs = load_documents(_inside(root, p["path"])) if "path" in p else list(yaml.safe_load_all(p["patch"]))
        for doc in docs:
            objects = apply_patch(objects, doc, f"{kfile}: patches[{n}]")

    if "namespace" in k:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]

    for g, suffix in generated:
        if suffix and any(g is o for o in objects):
            old = g["metadata"]["name"]
            g["metadata"]["name"] = f"{old}-{content_hash(g)}"
            renames.append((g["kind"], old, g["metadata"]["name"]))
    all_refs = _builtin_name_refs() + refs
    for kind, old, new in renames:
        for ref in (r for r in all_refs if r.kind == kind):
            for o in objects:
                if o["kind"] == ref.referrer_kind:
                    _walk_refs(o, ref.path.split("/"), old, new)
    return Rendered(objects, refs, renames)


def render(path: str | Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build path`` outputs (Namespaces first, otherwise in input order)."""
    objects = _render(Path(path), ()).objects
    return [o for o in objects if o["kind"] == "Namespace"] + [o for o in objects if o["kind"] != "Namespace"]


def find(objects: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} objects of kind {kind} named {name}")
    return hits[0]
