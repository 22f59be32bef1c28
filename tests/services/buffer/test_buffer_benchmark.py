"""benchmarks/buffer.py runs (quick sizes, private redis-server) and prints its one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_benchmark_quick_prints_one_json_line():
    out = subprocess.run([sys.executable, "benchmarks/buffer.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    for key in ("insert_groups_per_s", "sample_ms_p50_1e4", "sample_ms_p50_1e6", "flatness", "raw_redis_ratio",
                "raw_bytes_ratio", "insert_ratio", "sample_ratio", "step_ms_p50", "raw_step_ms_p50",
                "raw_bytes_step_ms_p50", "lua_ms_p50_1e4", "lua_ms_p50_1e6", "raw_redis_ratio_step_p10",
                "raw_redis_ratio_step_p90", "step_lua_insert_ms_p50", "step_lua_sample_ms_p50"):
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    # a training step: one step's groups in, one batch out, for every side
    assert res["step_groups_in"] * 8 == res["step_batch_out"] == 256 and res["steps"] > 0
    assert res["raw_redis_ratio_step_p10"] <= res["raw_redis_ratio_step_p90"]
    # the fair baseline does strictly more work than the bytes-only floor
    assert res["raw_bytes_ratio"] > res["raw_redis_ratio"]
    assert res["flatness"] == round(res["sample_ms_p50_1e6"] / res["sample_ms_p50_1e4"], 4) or abs(
        res["flatness"] - res["sample_ms_p50_1e6"] / res["sample_ms_p50_1e4"]) < 1e-3
    assert res["stored_1e4"] > 0 and res["stored_1e6"] > res["stored_1e4"]
