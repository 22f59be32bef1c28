"""Strict offline validation of Kubernetes objects and Ray Serve configs.

Kubernetes (``kubernetes`` client 37): its models are pydantic models that reject unknown fields and
check types and required fields (``model_validate``), but they also accept the Python attribute
names (``container_port``) that the API server would reject.  ``k8s_errors`` therefore does both:
``model_validate`` and a walk over ``attribute_map``/``openapi_types`` that allows only the JSON
(camelCase) names, recursively.

Ray Serve (``ray.serve.schema.ServeDeploySchema``) ignores unknown fields, so a misspelt key
(``autoscaling_confg``) would be dropped silently; ``pydantic_unknown_keys`` walks the pydantic
models' fields recursively and reports any key that no model declares.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from kubernetes import client
from pydantic import BaseModel, ValidationError

K8S_MODELS: dict[tuple[str, str], type] = {
    ("v1", "Namespace"): client.V1Namespace,
    ("v1", "Service"): client.V1Service,
    ("v1", "ConfigMap"): client.V1ConfigMap,
    ("v1", "Secret"): client.V1Secret,
    ("v1", "PersistentVolumeClaim"): client.V1PersistentVolumeClaim,
    ("v1", "Pod"): client.V1Pod,
    ("apps/v1", "Deployment"): client.V1Deployment,
    ("apps/v1", "StatefulSet"): client.V1StatefulSet,
    ("batch/v1", "Job"): client.V1Job,
}

_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")


def _model_class(type_name: str) -> type | None:
    cls = getattr(client, type_name, None)
    return cls if isinstance(cls, type) and hasattr(cls, "openapi_types") else None


def k8s_unknown_fields(model: type, data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that are not JSON field names of ``model``, recursively."""
    if not isinstance(data, dict):
        return []
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        here = f"{path}.{key}" if path else key
        if key not in by_json:
            errors.append(f"{here}: unknown field of {model.__name__}")
            continue
        errors += _k8s_value(model.openapi_types[by_json[key]], value, here)
    return errors


def _k8s_value(type_name: str, value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if m := _LIST.match(type_name):
        return [e for i, v in enumerate(value if isinstance(value, list) else []) for e in _k8s_value(m.group(1), v, f"{path}[{i}]")]
    if m := _DICT.match(type_name):
        return [e for k, v in (value.items() if isinstance(value, dict) else []) for e in _k8s_value(m.group(1), v, f"{path}.{k}")]
    cls = _model_class(type_name)
    return k8s_unknown_fields(cls, value, path) if cls is not None else []


def k8s_errors(obj: dict[str, Any], model: type | None = None) -> list[str]:
    """Every problem of one object: unknown kind, unknown/non-JSON field names, wrong types, missing fields."""
    if model is None:
        model = K8S_MODELS.get((obj.get("apiVersion"), obj.get("kind")))
        if model is None:
            return [f"no kubernetes model for apiVersion={obj.get('apiVersion')!r} kind={obj.get('kind')!r}"]
    errors = k8s_unknown_fields(model, obj)
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        errors += [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return errors


# --------------------------------------------------------------------------- pydantic (Ray Serve)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation can hold (through Optional/Union/List/Dict/Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _container_kind(annotation: Any) -> str:
    """'list', 'dict' or 'model' for how values of this annotation nest models."""
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        return "list"
    if origin in (dict, typing.Dict):
        return "dict"
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        kinds = {_container_kind(a) for a in typing.get_args(annotation) if a is not type(None)}
        return "list" if "list" in kinds else "dict" if kinds == {"dict"} else "model"
    return "model"


def pydantic_unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` (a dict meant for ``model``) that no field of the model declares, recursively."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = {n: f for n, f in fields.items()} | {f.alias: f for f in fields.values() if f.alias}
    errors = []
    for key, value in data.items():
        here = f"{path}.{key}" if path else key
        f = names.get(key)
        if f is None:
            errors.append(f"{here}: unknown field of {model.__name__}")
            continue
        models = _models_in(f.annotation)
        if not models or value is None:
            continue
        kind = _container_kind(f.annotation)
        if kind == "list" and isinstance(value, list):
            for i, v in enumerate(value):
                errors += pydantic_unknown_keys(models[0], v, f"{here}[{i}]")
        elif kind == "dict" and isinstance(value, dict):
            for k, v in value.items():
                errors += pydantic_unknown_keys(models[0], v, f"{here}.{k}")
        elif isinstance(value, dict):
            errors += pydantic_unknown_keys(models[0], value, here)
    return errors


def serve_config_errors(config: dict[str, Any]) -> list[str]:
    """Problems of a Ray Serve config file (the ``serve deploy`` / serveConfigV2 schema), strictly."""
    from ray.serve.schema import ServeDeploySchema

    errors = pydantic_unknown_keys(ServeDeploySchema, config)
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        errors += [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return errors
