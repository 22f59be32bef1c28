"""Fixtures of the rollout tests: the fine-tuned tiny model (see rollout_helpers.py), configs on
private Redis namespaces, a real verifier process."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from common.config import RethinkerConfig, load_config
from rollout_helpers import ServiceProc, _train_sft, cache_root, drop_namespace, free_port, make_cfg


@pytest.fixture(scope="session")
def sft_model_dir(tiny_model_dir: Path) -> Path:
    base = Path(tiny_model_dir)
    stamp = "".join((base / f).read_text() for f in ("rethinker_build.json", "config.json") if (base / f).exists())
    recipe = hashlib.sha256(((Path(__file__).parent / "rollout_helpers.py").read_text() + stamp).encode()).hexdigest()[:10]
    out = cache_root() / f"rollout-sft-{recipe}"
    if not (out / "sft.json").exists():
        _train_sft(Path(tiny_model_dir), out)
    return out


@pytest.fixture
def cfg_factory(redis_url: str, tiny_model_dir: Path):
    made: list[RethinkerConfig] = []

    def make(*overrides: str, model_dir: Path | None = None) -> RethinkerConfig:
        cfg = make_cfg(redis_url, model_dir or tiny_model_dir, *overrides)
        made.append(cfg)
        return cfg

    yield make
    for cfg in made:
        drop_namespace(redis_url, cfg.redis.namespace)


@pytest.fixture(scope="session")
def verifier_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real verifier process (``rethinker serve verifier``) on a free port."""
    port = free_port()
    cfg = load_config(None, [f"verifier.port={port}", "verifier.workers=1"])
    proc = ServiceProc("verifier", cfg, tmp_path_factory.mktemp("verifier"))
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url, timeout_s=90)
        yield url
    finally:
        proc.terminate()
