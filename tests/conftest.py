"""Session fixtures shared by every test: the tiny model folder, a small synthetic data set, Redis.

- ``tiny_model_dir``: the tiny Qwen2.5-VL (seed 0), built once into ``$RETHINKER_CACHE_DIR/tiny-model-seed0``
  (default ``<repo>/.cache/tiny-model-seed0``) and reused by later runs while its build stamp (the
  builder's code hash + library versions) is current.  Treat it as read-only: load it, never save
  into it.
- ``synth_data_dir``: ``train.parquet`` (58 rows) and ``eval.parquet`` (6 rows) of the synthetic set
  (seed 0), written once per session into a temp folder.
- ``redis_url``: ``$REDIS_URL`` or ``redis://127.0.0.1:6379/0``; tests use their own key namespace.

Tests never reach a model or dataset hub: the hub is switched off for the whole session.  Torch runs
one intra-op thread per process unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub / datasets: no hub access from tests, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors on a shared 2-core machine: one intra-op thread is 10-20x faster than two threads
# spinning against other processes (generate 8x32 tokens on the tiny model: ~0.06 s vs ~1 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTH_N = 64
SYNTH_SEED = 0


def cache_root() -> Path:
    """Where session artefacts that outlive a run are kept (``$RETHINKER_CACHE_DIR`` or ``.cache``)."""
    return Path(os.environ.get("RETHINKER_CACHE_DIR") or REPO_ROOT / ".cache")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from devtools.tiny_model import ensure_tiny_model

    return ensure_tiny_model(cache_root() / "tiny-model-seed0", seed=0, size="tiny")


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devtools.synth_data import synth_dataset

    out = tmp_path_factory.mktemp("synth")
    synth_dataset(out, n=SYNTH_N, seed=SYNTH_SEED, eval_fraction=0.1)
    return out


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
