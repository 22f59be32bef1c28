"""Fixtures of the evaluation tests: synthetic benchmark suites in each public layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import eval_synth


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """All six suites under one DATA_DIR (read-only: copy before changing), with their truth."""
    root = tmp_path_factory.mktemp("benchdata")
    truth = eval_synth.write_all(root)
    return root, truth


@pytest.fixture
def bench_copy(bench_root: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    root, truth = bench_root
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst, truth
