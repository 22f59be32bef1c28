"""Config loading: YAML + env + --set layering, and errors that name the field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import (
    PROMPT_SUFFIX,
    ConfigError,
    RethinkerConfig,
    config_from_json,
    config_to_yaml,
    load_config,
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


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "qwen2.5-vl-7b-8gpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name, environ={})
    assert cfg.run.name


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
