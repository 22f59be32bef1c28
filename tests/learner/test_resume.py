"""kill -9 of the learner process, then a restart with the same config: it resumes at the last complete
checkpoint with the same step and version, and a rollout-side receiver that kept running simply
continues (it is sent the restored version, then the following ones)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.learner.helpers import child_env

import pytest

from common.config import config_to_yaml
from tests.learner.producer import Producer

REPO = Path(__file__).resolve().parents[2]


def _start(cfg_path: Path, log_path: Path) -> subprocess.Popen:
    env = child_env()
    return subprocess.Popen(
        [sys.executable, "-m", "learner.main", "learn", "--config", str(cfg_path), "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True,
    )


def _events(log_path: Path, name: str) -> list[dict]:
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


@pytest.mark.slow
def test_kill_9_and_restart_resumes_step_version_and_receivers_continue(make_cfg, tiny_model_dir, tmp_path):
    from common.weight_transport import make_receiver

    cfg = make_cfg("learner.total_steps=8", "learner.checkpoint_every=3", "algorithm.ssr.staleness_bound=2")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config_to_yaml(cfg))
    versions: list[int] = []
    rx = make_receiver(cfg, server_id="rx-resume", on_weights=lambda w, v: versions.append(v), initial_version=0).start()
    producer = Producer(cfg, str(tiny_model_dir)).start()
    latest = Path(cfg.learner.checkpoint_dir) / "LATEST"
    try:
        first = _start(cfg_path, tmp_path / "first.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (latest.exists() and latest.read_text() == "step-00000003"):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -9
        tag = latest.read_text()
        assert tag == "step-00000003"
        n_before = len(versions)

        second = _start(cfg_path, tmp_path / "second.log")
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        producer.stop()
    started = _events(tmp_path / "second.log", "learner_started")[0]
    assert started["resumed"] is True and started["step"] == 3 and started["version"] == 3
    steps = [e["step"] for e in _events(tmp_path / "second.log", "step")]
    assert steps == [4, 5, 6, 7, 8]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 8 and summary["version"] == 8 and summary["resumed"] is True
    # the receiver never restarted: after the kill it got the restored version 3, then 4..8
    assert rx.wait_for_version(8, timeout=20)
    rx.stop()
    after = versions[n_before:]
    assert after[0] == 3 and after[-5:] == [4, 5, 6, 7, 8], versions
    # the restored data cursor continued from the checkpoint (no task published twice as new work)
    ck = json.loads((Path(cfg.learner.checkpoint_dir) / "step-00000008" / "learner.json").read_text())
    assert ck["feeder"]["published"] >= 8 * cfg.learner.prompts_per_step
