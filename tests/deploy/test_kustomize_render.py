"""The offline kustomize renderer (kustomize_render.py) does what kustomize does for our subset."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from kustomize_render import KustomizeError, content_hash, render

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: web:1
          args: ["a", "b"]
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
          envFrom: [{configMapRef: {name: settings}}, {secretRef: {name: creds}}]
          ports: [{name: http, containerPort: 80}]
          volumeMounts: [{name: conf, mountPath: /etc/web}]
        - name: sidecar
          image: side:1
      volumes:
        - name: conf
          configMap: {name: settings}
"""

CRD = """
apiVersion: example.io/v1
kind: Widget
metadata: {name: w}
spec:
  pod:
    volumes: [{name: conf, configMap: {name: settings}}]
  items: [{name: a, size: 1}, {name: b, size: 2}]
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def kinds(objs: list[dict]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objs]


def test_generators_hash_and_rewrite_references(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "kustomization.yaml": yaml.safe_dump({
            "resources": ["app.yaml"],
            "namespace": "ns1",
            "configMapGenerator": [{"name": "settings", "files": ["web.yaml=conf/web.yaml"], "literals": ["MODE=fast"]}],
            "secretGenerator": [{"name": "creds", "envs": ["creds.env"]}],
        }),
        "app.yaml": DEPLOYMENT,
        "conf/web.yaml": "port: 80\n",
        "creds.env": "# comment\nTOKEN=abc\n\nPASS=x=y\n",
    })
    objs = render(root)
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    sec = next(o for o in objs if o["kind"] == "Secret")
    assert cm["data"] == {"web.yaml": "port: 80\n", "MODE": "fast"}
    assert {k: base64.b64decode(v).decode() for k, v in sec["data"].items()} == {"TOKEN": "abc", "PASS": "x=y"}
    assert sec["type"] == "Opaque"
    assert cm["metadata"]["name"].startswith("settings-") and len(cm["metadata"]["name"]) == len("settings-") + 10
    dep = next(o for o in objs if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert pod["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": cm["metadata"]["name"]}}, {"secretRef": {"name": sec["metadata"]["name"]}}]
    assert {o["metadata"]["namespace"] for o in objs} == {"ns1"}


def test_hash_follows_content() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    h1 = content_hash(cm)
    assert h1 == content_hash({**cm, "metadata": {"name": "c", "labels": {"x": "y"}}})  # labels do not count
    assert h1 != content_hash({**cm, "data": {"a": "2"}})
    assert h1 != content_hash({**cm, "metadata": {"name": "d"}})
    assert set(h1) <= set("0123456789abcdefghkmt") and not set(h1) & set("013ae")


def test_strategic_merge_patch(tmp_path: Path) -> None:
    patch = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: web
          image: web:2
          args: ["c"]
          env: [{name: B, value: "two"}, {name: C, value: "3"}, {name: A, $patch: delete}]
          volumeMounts: [{name: cache, mountPath: /cache}]
        - name: sidecar
          $patch: delete
      volumes:
        - name: cache
          emptyDir: {}
"""
    root = write(tmp_path, {
        "kustomization.yaml": yaml.safe_dump({"resources": ["app.yaml"], "patches": [{"path": "patch.yaml"}]}),
        "app.yaml": DEPLOYMENT,
        "patch.yaml": patch,
    })
    dep = render(root)[0]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 3
    assert [c["name"] for c in pod["containers"]] == ["web"]
    web = pod["containers"][0]
    assert web["image"] == "web:2" and web["args"] == ["c"]  # lists without merge key are replaced
    assert web["env"] == [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]
    assert [m["mountPath"] for m in web["volumeMounts"]] == ["/etc/web", "/cache"]
    assert [v["name"] for v in pod["volumes"]] == ["conf", "cache"]
    assert web["ports"] == [{"name": "http", "containerPort": 80}]  # untouched


def test_delete_patch_and_crd_lists_replace(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "kustomization.yaml": yaml.safe_dump({
            "resources": ["app.yaml", "crd.yaml"],
            "patches": [
                {"patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n$patch: delete\n"},
                {"patch": "apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: w}\nspec:\n  items: [{name: b, size: 5}]\n"},
            ],
        }),
        "app.yaml": DEPLOYMENT,
        "crd.yaml": CRD,
    })
    objs = render(root)
    assert kinds(objs) == [("Widget", "w")]
    assert objs[0]["spec"]["items"] == [{"name": "b", "size": 5}]  # no schema for a CRD: replaced


def test_configurations_and_sibling_references(tmp_path: Path) -> None:
    """A reference inside a custom resource follows a generated name only with a nameReference
    configuration; references from a sibling folder are fixed at the level that includes both."""
    write(tmp_path, {
        "gen/kustomization.yaml": yaml.safe_dump({"configMapGenerator": [{"name": "settings", "literals": ["A=1"]}]}),
        "crd/kustomization.yaml": yaml.safe_dump({"resources": ["crd.yaml"], "configurations": ["conf.yaml"]}),
        "crd/crd.yaml": CRD,
        "crd/conf.yaml": yaml.safe_dump({"nameReference": [
            {"kind": "ConfigMap", "fieldSpecs": [{"kind": "Widget", "path": "spec/pod/volumes/configMap/name"}]}]}),
        "top/kustomization.yaml": yaml.safe_dump({"resources": ["../gen", "../crd"]}),
        "plain/kustomization.yaml": yaml.safe_dump({"resources": ["../gen", "crd.yaml"]}),
        "plain/crd.yaml": CRD,
    })
    objs = render(tmp_path / "top")
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    widget = next(o for o in objs if o["kind"] == "Widget")
    assert widget["spec"]["pod"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"] != "settings"
    plain = next(o for o in render(tmp_path / "plain") if o["kind"] == "Widget")
    assert plain["spec"]["pod"]["volumes"][0]["configMap"]["name"] == "settings"


@pytest.mark.parametrize(
    "kustomization, message",
    [
        ({"resources": ["app.yaml"], "images": [{"name": "web", "newTag": "2"}]}, "not supported"),
        ({"resources": ["app.yaml"], "configMapGenerator": [{"name": "x", "behavior": "merge", "literals": ["a=b"]}]}, "behavior"),
        ({"resources": ["app.yaml"], "configMapGenerator": [{"name": "x", "files": ["../outside.yaml"]}]}, "outside"),
        ({"resources": ["app.yaml"], "patches": [{"path": "nope.yaml"}]}, "no such file"),
        ({"resources": ["app.yaml"], "patches": [{"patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n"}]}, "0 targets"),
        ({"resources": ["app.yaml", "app.yaml"]}, "defined twice"),
        ({"resources": ["app.yaml"], "patches": [{"path": "app.yaml", "target": {"kind": "Deployment"}}]}, "target"),
    ],
)
def test_refuses_what_it_does_not_render(tmp_path: Path, kustomization: dict, message: str) -> None:
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    root = write(tmp_path / "k", {"kustomization.yaml": yaml.safe_dump(kustomization), "app.yaml": DEPLOYMENT})
    with pytest.raises(KustomizeError, match=message):
        render(root)
