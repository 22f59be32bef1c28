"""``rethinker eval`` / ``rethinker chat`` command lines: listing and readable errors (exit status 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rethinker.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env=env)


def test_list_names_every_benchmark_and_its_folders():
    r = cli("eval", "--list")
    assert r.returncode == 0, r.stderr
    for name in ("mathvista", "mathverse", "mathvision", "mmmu_pro", "emma", "virl"):
        assert name in r.stdout
    assert "standard10 (default)" in r.stdout and "vision" in r.stdout
    assert "mmmu         MMMU validation" in r.stdout and "validation (default), dev" in r.stdout


def test_bad_benchmark_and_missing_data_are_one_line_errors(bench_root, tmp_path):
    root, _ = bench_root
    r = cli("eval", "--bench", "mathvoodoo", "--data-dir", str(root), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown benchmark 'mathvoodoo'" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", "--bench", "mathvista", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no data for this benchmark" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", "--bench", f"mmmu={tmp_path}", "--out", str(tmp_path / "o"))  # a folder in no MMMU layout
    assert r.returncode == 2 and "mmmu: no subject folder" in r.stderr and "Accounting" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_model_is_a_readable_error(bench_root, tmp_path):
    root, _ = bench_root
    r = cli("eval", "--model", str(tmp_path / "no-model"), "--bench", "emma", "--data-dir", str(root),
            "--out", str(tmp_path / "o"), "--judge-workers", "0", "--no-progress")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no-model" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
