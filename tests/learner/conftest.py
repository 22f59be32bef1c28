"""Fixtures of the learner tests: environment for DeepSpeed on CPU and a config factory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

# Small but real: 2 prompts x 8 responses x 0.5 = 8 trained samples per step, micro-batches of 4.
BASE_OVERRIDES = [
    "learner.zero_stage=2",
    "learner.precision=fp32",
    "learner.lr=1e-3",
    "learner.warmup_ratio=0",
    "learner.prompts_per_step=2",
    "learner.micro_batch_size=4",
    "algorithm.sampling.n=8",
    "data.min_pixels=3136",
    "data.max_pixels=12544",
    "data.max_prompt_tokens=512",
    "learner.weight_sync.master_port=0",
    "learner.weight_sync.bucket_mb=0.25",
    "learner.weight_sync.timeout_s=10",
    "learner.weight_sync.join_timeout_s=5",
    "learner.weight_sync.heartbeat_s=0.5",
    "learner.weight_sync.poll_s=0.05",
]


@pytest.fixture
def make_cfg(tiny_model_dir, synth_data_dir, redis_url, tmp_path):
    """``make_cfg(*overrides)`` -> a RethinkerConfig on a private Redis namespace and run folder."""
    import redis

    from common.config import load_config

    namespaces: list[str] = []

    def make(*overrides: str):
        ns = f"test-learn-{uuid.uuid4().hex[:8]}"
        namespaces.append(ns)
        return load_config(
            None,
            [
                f"model.path={tiny_model_dir}",
                f"data.train_path={synth_data_dir / 'train.parquet'}",
                f"redis.url={redis_url}",
                f"redis.namespace={ns}",
                f"run.run_dir={tmp_path / 'run'}",
                f"learner.checkpoint_dir={tmp_path / 'run' / 'ckpt'}",
                *BASE_OVERRIDES,
                *overrides,
            ],
        )

    yield make
    r = redis.Redis.from_url(redis_url)
    for ns in namespaces:
        for k in r.scan_iter(f"{ns}:*"):
            r.delete(k)


@pytest.fixture(scope="session")
def synth_rows(synth_data_dir):
    from common.data.loader import load_rows

    return load_rows(synth_data_dir / "train.parquet")
