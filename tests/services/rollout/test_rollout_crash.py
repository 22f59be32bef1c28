"""Two rollout server processes; one is killed with SIGKILL mid-batch: every prompt task still ends up
in exactly one stored group, and the survivor exits cleanly on SIGTERM.  Own redis-server."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from common.config import PROMPT_SUFFIX
from common.schemas import PromptTask, group_id_for
from rollout_helpers import ServiceProc, free_port, make_cfg, png
from services.buffer.client import BufferClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N_TASKS = 16


@pytest.fixture
def own_redis(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    r = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    r.close()
    proc.terminate()
    proc.wait(10)


def status(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=5).json()


def test_kill9_loses_no_prompt_and_duplicates_no_group(own_redis, tiny_model_dir, verifier_url, tmp_path):
    port_a, port_b = free_port(), free_port()
    cfg = make_cfg(
        own_redis,
        tiny_model_dir,
        f"verifier.url={verifier_url}",
        "algorithm.sampling.n=4",
        "algorithm.sampling.max_new_tokens=96",
        "rollout.batch_prompts=2",
        "buffer.reclaim_idle_s=3",
        "rollout.heartbeat_ttl_s=3",
        "rollout.shutdown_grace_s=30",
    )
    buf = BufferClient(cfg)
    tasks = [
        PromptTask(task_id=f"k{i}", prompt_id=f"k{i}", question="<image>How many shapes are there?", answer="3",
                   images=[png((20 * i, 0, 255 - 20 * i))], prompt_suffix=PROMPT_SUFFIX)
        for i in range(N_TASKS)
    ]
    a = ServiceProc("rollout", cfg, tmp_path, f"rollout.port={port_a}", "rollout.server_id=rs-a", tag="a")
    b = ServiceProc("rollout", cfg, tmp_path, f"rollout.port={port_b}", "rollout.server_id=rs-b", tag="b")
    try:
        a.wait_http(f"http://127.0.0.1:{port_a}")
        b.wait_http(f"http://127.0.0.1:{port_b}")
        buf.publish_tasks(tasks)
        # kill -9 while A holds claimed, unacked tasks (mid-batch), preferably after it stored a group
        deadline = time.monotonic() + 60
        soft = time.monotonic() + 10
        while True:
            st_a = status(port_a)
            if st_a["in_flight_tasks"] > 0 and (st_a["actor"]["groups_stored"] > 0 or time.monotonic() > soft):
                break
            assert time.monotonic() < deadline, a.tail()
            time.sleep(0.01)
        a.kill9()
        assert buf.queue_stats().pending >= 1  # A's claimed tasks are still unacked
        deadline = time.monotonic() + 120
        while buf.queue_stats().inflight > 0:
            assert time.monotonic() < deadline, b.tail()
            time.sleep(0.2)
        groups = {t.task_id: buf.get_group(group_id_for(t)) for t in tasks}
        sizes = buf.sizes()
        st_b = status(port_b)
        deadline = time.monotonic() + 10  # the killed server's registration expires (TTL 3 s)
        while "rs-a" in (live := buf.live_servers()):
            assert time.monotonic() < deadline, live
            time.sleep(0.2)
        assert "rs-b" in live
        assert b.terminate() == 0  # SIGTERM: clean exit
        assert "rs-b" not in buf.live_servers()
    finally:
        a.kill9()
        b.terminate()
        buf.close()
    assert all(g is not None for g in groups.values()), [k for k, g in groups.items() if g is None]
    assert sizes.groups == N_TASKS  # exactly one group per task
    assert sizes.stored == 4 * N_TASKS
    assert all(len(g.samples) == 4 for g in groups.values())
    assert {g.server_id for g in groups.values()} <= {"rs-a", "rs-b"}
    by_a = sum(g.server_id == "rs-a" for g in groups.values())
    assert by_a < N_TASKS and st_b["actor"]["groups_stored"] == N_TASKS - by_a
    # B acked every task A did not ack: new groups, plus duplicates of groups A stored but never acked
    sb = st_b["actor"]
    assert sb["tasks_acked"] == sb["groups_stored"] + sb["groups_duplicate"] and sb["tasks_rejected"] == 0
