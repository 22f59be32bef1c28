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
def test_kill_9_and_restart_resumes_step_and_versions_never_go_backwards(make_cfg, tiny_model_dir, tmp_path):
    """Killed after it published versions newer than its last checkpoint, the restarted learner
    resumes at the checkpoint's step, publishes the restored weights under a version number above
    every one published before, counts on from there, and the receiver that kept running resyncs
    (its versions only ever grow)."""
    from weight_transport import make_receiver
    from services.buffer.client import BufferClient

    cfg = make_cfg("learner.total_steps=8", "learner.checkpoint_every=3", "algorithm.ssr.staleness_bound=2")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config_to_yaml(cfg))
    versions: list[int] = []
    rx = make_receiver(cfg, server_id="rx-resume", on_weights=lambda w, v: versions.append(v), initial_version=0).start()
    producer = Producer(cfg, str(tiny_model_dir)).start()
    latest = Path(cfg.learner.checkpoint_dir) / "LATEST"
    buf = BufferClient(cfg)
    try:
        first = _start(cfg_path, tmp_path / "first.log")
        deadline = time.monotonic() + 180
        # kill once version 5 is out: the last complete checkpoint (step 3) is older than that
        while time.monotonic() < deadline and not (rx.loaded_version >= 5 and latest.exists()):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -9
        tag = latest.read_text()
        ck_step = int(tag.split("-")[1])
        high = buf.highest_policy_version()
        assert high is not None and high >= rx.loaded_version, "a version reached a receiver before it was recorded"
        assert ck_step == 3 and high is not None and high >= 5 > ck_step, (tag, high)
        n_before = len(versions)

        second = _start(cfg_path, tmp_path / "second.log")
        out, _ = second.communicate(timeout=240)
        assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        producer.stop()
    started = _events(tmp_path / "second.log", "learner_started")[0]
    assert started["resumed"] is True and started["step"] == ck_step
    assert started["version"] == high + 1, "the restored weights must get a version number never used before"
    steps = [e["step"] for e in _events(tmp_path / "second.log", "step")]
    assert steps == list(range(ck_step + 1, 9))
    summary = json.loads(out.strip().splitlines()[-1])
    offset = high + 1 - ck_step
    assert summary["step"] == 8 and summary["version"] == 8 + offset and summary["resumed"] is True
    assert buf.highest_policy_version() == 8 + offset
    # the receiver never restarted: it held `high`, then resynced to high + 1, then every later version
    assert rx.wait_for_version(8 + offset, timeout=30)
    rx.stop()
    assert all(b > a for a, b in zip(versions, versions[1:])), f"versions went backwards: {versions}"
    after = versions[n_before:]
    assert after[0] == high + 1 and after[-1] == 8 + offset, versions
    # the restored data cursor continued: the tasks published between the checkpoint and the kill
    # were reported as duplicates, not counted, and new work followed at once
    ck = json.loads((Path(cfg.learner.checkpoint_dir) / "step-00000008" / "learner.json").read_text())
    assert ck["feeder"]["duplicates"] > 0
    assert ck["feeder"]["published"] >= 8 * cfg.learner.prompts_per_step
    waits = [e for e in _events(tmp_path / "second.log", "step")]
    assert max(e.get("idle_s", 0.0) for e in waits) < 60, "a resumed learner waited for work that never came"
