"""deploy/ray/serve-config.yaml: valid for Ray Serve, and its import paths build real applications.

Ray Serve's schema ignores unknown keys, so the config is also walked strictly
(strict_models.serve_config_errors).  Each application's ``import_path`` is imported and called the
way the Serve controller does (``call_user_app_builder_with_args_if_necessary``) with the config's
``args``, the in-container config path mapped to the repository's config files: this builds the
application object without starting Ray.
"""

from __future__ import annotations

import importlib

import pytest
import yaml

from deploy_checks import DEPLOY, config_sources
from strict_models import serve_config_errors

SERVE_CONFIG = DEPLOY / "ray" / "serve-config.yaml"
IN_CONTAINER_CONFIG = "/etc/rethinker/config.yaml"


def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def test_schema() -> None:
    assert serve_config_errors(serve_config()) == []
    bad = serve_config()
    bad["applications"][0]["improt_path"] = bad["applications"][0].pop("import_path")
    bad["http_options"]["prot"] = 1
    errors = " | ".join(serve_config_errors(bad))
    assert "improt_path" in errors and "prot" in errors and "import_path" in errors


def test_only_the_verifier_runs_on_ray_serve() -> None:
    apps = serve_config()["applications"]
    assert [a["name"] for a in apps] == ["verifier"]
    from services.verifier import serve_ray

    assert apps[0]["name"] == serve_ray.APP_NAME


@pytest.mark.parametrize("config_name", sorted(config_sources()))
def test_import_paths_build_applications(config_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # the GPU config requires the weight-sync token; the pods get it from the secret's environment
    monkeypatch.setenv("RETHINKER__LEARNER__WEIGHT_SYNC__TOKEN", "token-from-the-secret")
    doc = serve_config()
    source = config_sources()[config_name]
    for app in doc["applications"]:
        args = dict(app.get("args") or {})
        assert args.get("config") == IN_CONTAINER_CONFIG, "the pods mount the config there"
        args["config"] = str(source)
        module, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), attr)
        built = call_user_app_builder_with_args_if_necessary(builder, args)
        assert isinstance(built, Application), f"{app['import_path']} did not build a Serve application"
    # the port Serve listens on is the config's verifier.port, which clients use
    from common.config import load_config

    assert doc["http_options"]["port"] == load_config(source).verifier.port
