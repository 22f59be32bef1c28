"""Renders the configuration reference (docs/configuration.md) from the pydantic schema.

``rethinker config schema`` prints it; a test checks that docs/configuration.md is up to date.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from common.config import RethinkerConfig


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(_rows(ann, path + "."))
            continue
        default: Any = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        type_name = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        if "SecretStr" in type_name:  # common.config.Secret: shown redacted, set from the environment
            type_name = "secret | None" if "None" in type_name else "secret"
        doc = field.description or ""
        rows.append((path, type_name, json.dumps(default, default=str), doc))
    return rows


def render_markdown() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `common/config.py` by `rethinker config schema`; do not edit by hand.",
        "Load order: YAML file (`--config`), then environment `RETHINKER__SECTION__FIELD=value`,",
        "then `--set section.field=value`. Values are parsed as YAML scalars.",
        "",
        "Fields of type `secret` (passwords and bearer tokens) are never printed: `rethinker config show`,",
        "the run's saved `<run_dir>/config.yaml` and the buffer's `/v1/admin/config` show them (and a",
        "password inside `redis.url`) as `***`, and a config that holds `***` as a secret is refused.",
        "Set them from the environment (`RETHINKER__REDIS__PASSWORD`, `RETHINKER__ROLLOUT__API_TOKEN`, ...)",
        "or a Secret; an empty value means unset.  See docs/deployment.md, \"Security\", for what each",
        "token guards and the request limits (`*.max_body_bytes`, `verifier.request_budget_s`,",
        "`rollout.max_image_pixels`).",
        "",
    ]
    for section, field in RethinkerConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out += [f"## `{section}`", "", (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ and model.__doc__.strip() else "", ""]
        out += ["| field | type | default |", "|---|---|---|"]
        for path, type_name, default, _doc in _rows(model, f"{section}."):
            out.append(f"| `{path}` | `{type_name.replace('|', 'or')}` | `{default}` |")
        out.append("")
    return "\n".join(out)
