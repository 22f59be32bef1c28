"""Config loading: YAML + env + --set layering, and errors that name the field and value."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.config import (
    PROMPT_SUFFIX,
    REDACTED,
    SECRET_FIELDS,
    ConfigError,
    RethinkerConfig,
    config_dict,
    config_from_json,
    config_to_json,
    config_to_yaml,
    env_name,
    load_config,
    reveal,
    secret_env,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_spec():
    cfg = RethinkerConfig()
    a = cfg.algorithm
    assert (a.sampling.n, a.sampling.temperature, a.sampling.top_p, a.sampling.top_k) == (8, 1.0, 0.95, 40)
    assert (a.grpo.clip_low, a.grpo.clip_high, a.grpo.std_normalize, a.grpo.nll_coef) == (0.2, 0.35, False, 0.05)
    assert (a.ssr.mode, a.ssr.alpha, a.ssr.replay_eps) == ("ssr", 1.0, 1e-4)
    assert (a.rethink.skip_prob, a.rethink.truncate_prob, a.rethink.max_kept_per_prompt) == (0.35, 0.5, 2)
    assert (a.reward.invalid, a.reward.shaping) == (-0.1, False)
    assert cfg.learner.lr == 1e-6 and cfg.learner.betas == (0.9, 0.95) and cfg.learner.min_lr_ratio == 0.5
    assert (cfg.data.min_pixels, cfg.data.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)
    assert cfg.data.prompt_suffix == PROMPT_SUFFIX


DEMO_CONFIGS = {"tiny-cpu.yaml", "ablation-cpu.yaml"}  # the tiny CPU demo configs


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    """Demo configs load as they are; every other shipped config refuses to load without the
    weight-sync token and loads with it from the environment."""
    path = ROOT / "configs" / name
    if name in DEMO_CONFIGS:
        assert load_config(path, environ={}).run.name
        return
    with pytest.raises(ConfigError, match=r"learner\.weight_sync\.token: required"):
        load_config(path, environ={})
    cfg = load_config(path, environ={"RETHINKER__LEARNER__WEIGHT_SYNC__TOKEN": "t0k3n-from-env"})
    assert reveal(cfg.learner.weight_sync.token) == "t0k3n-from-env"
    generated = load_config(path, environ={}, generate={"learner.weight_sync.token": lambda: "made-up"})
    assert reveal(generated.learner.weight_sync.token) == "made-up"


SECRETS = {
    "redis.password": "pw-Alpha1",
    "buffer.admin_token": "adm-Bravo2",
    "buffer.read_token": "read-Charlie3",
    "verifier.api_token": "ver-Delta4",
    "rollout.api_token": "roll-Echo5",
    "learner.weight_sync.token": "sync-Foxtrot6",
}


def test_secrets_are_redacted_everywhere_they_are_shown_and_travel_by_env(tmp_path):
    env = {env_name(k): v for k, v in SECRETS.items()}
    env["RETHINKER__REDIS__URL"] = "redis://user:url-Golf7@127.0.0.1:6390/0"
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", environ=env)
    assert set(SECRET_FIELDS) == set(SECRETS)
    assert reveal(cfg.rollout.api_token) == "roll-Echo5" and cfg.redis.effective_password() == "pw-Alpha1"
    shown = [config_to_yaml(cfg), config_to_json(cfg), repr(cfg), str(cfg), json.dumps(config_dict(cfg)),
             cfg.model_dump_json()]
    for text in shown:
        for value in [*SECRETS.values(), "url-Golf7"]:
            assert value not in text
    assert config_dict(cfg)["redis"]["url"] == "redis://user:***@127.0.0.1:6390/0"
    assert config_dict(cfg)["learner"]["weight_sync"]["token"] == REDACTED
    # a redacted file loads back only with the secrets from the environment
    saved = tmp_path / "saved.yaml"
    saved.write_text(config_to_yaml(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(saved, environ={})
    assert "redis.password" in str(err.value) and "redacted placeholder" in str(err.value)
    assert load_config(saved, environ=secret_env(cfg)) == cfg
    # the full form, for handing a config to a child process
    assert config_from_json(config_to_json(cfg, reveal_secrets=True)) == cfg
    assert "sync-Foxtrot6" in config_to_yaml(cfg, reveal_secrets=True)


def test_config_errors_never_echo_a_secret():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["redis.password=[not-a-string]", "redis.url=http://u:Hotel8@h/0"], environ={})
    assert "redis.password" in str(err.value) and "not-a-string" not in str(err.value)
    assert "Hotel8" not in str(err.value)
    # an empty value (e.g. an unset compose variable) means "not set"
    assert load_config(None, environ={"RETHINKER__ROLLOUT__API_TOKEN": ""}).rollout.api_token is None


def test_config_show_prints_no_secret(capsys):
    from rethinker.cli import main

    env = {env_name(k): v for k, v in SECRETS.items()}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for fmt in ("yaml", "json"):
            assert main(["config", "show", "--format", fmt, "--set", "redis.url=redis://:India9@127.0.0.1:1/0"]) == 0
            out = capsys.readouterr().out
            assert REDACTED in out
            for value in [*SECRETS.values(), "India9"]:
                assert value not in out, (fmt, value)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_layering_file_then_env_then_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  lr: 0.5\n  total_steps: 7\nalgorithm:\n  ssr:\n    mode: filter\n")
    env = {"RETHINKER__LEARNER__LR": "0.25", "RETHINKER__ALGORITHM__SSR__ALPHA": "2", "OTHER": "x"}
    cfg = load_config(f, ["learner.lr=0.125", "rollout.engine=vllm"], environ=env)
    assert cfg.learner.lr == 0.125  # CLI beats env beats file
    assert cfg.learner.total_steps == 7
    assert cfg.algorithm.ssr.alpha == 2.0 and cfg.algorithm.ssr.mode == "filter"
    assert cfg.rollout.engine == "vllm"


@pytest.mark.parametrize(
    "override, needle",
    [
        (["learner.lr=abc"], "learner.lr"),
        (["learner.zero_stage=7"], "learner.zero_stage"),
        (["nosuch.field=1"], "nosuch"),
        (["algorithm.ssr.mode=bogus"], "algorithm.ssr.mode"),
        (["algorithm.sampling.top_p=1.5"], "algorithm.sampling.top_p"),
        (["data.min_pixels=100", "data.max_pixels=10"], "min_pixels"),
        (["learner.lr"], "section.field=value"),
        (["learner.lr.x=1"], "learner.lr"),
    ],
)
def test_errors_name_field_and_value(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, override, environ={})
    assert needle in str(exc.value)


def test_bad_value_is_quoted_in_error():
    with pytest.raises(ConfigError, match=r"'abc'"):
        load_config(None, ["learner.lr=abc"], environ={})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst, environ={})


def test_round_trips_through_yaml_and_json(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", ["learner.lr=3e-4"], environ={})
    f = tmp_path / "dump.yaml"
    f.write_text(config_to_yaml(cfg))
    assert load_config(f, environ={}) == cfg
    assert config_from_json(cfg.model_dump_json()) == cfg


def test_configuration_reference_is_current():
    from common.config_docs import render_markdown

    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text() == render_markdown(), "docs/configuration.md is stale: run `make docs`"
