"""The learner loop against the real buffer: prompt feeding within the staleness bound, SSR batches,
versioned broadcast to a live receiver, metrics, checkpoints with an HF export."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tests.learner.producer import Producer


@pytest.mark.slow
def test_trainer_feeds_trains_broadcasts_and_checkpoints(make_cfg, tiny_model_dir, tmp_path):
    from common.model_loading import load_model
    from weight_transport import make_receiver, read_sync_state
    from learner.trainer import Trainer
    from services.buffer.client import BufferClient

    cfg = make_cfg("learner.total_steps=4", "learner.checkpoint_every=2", "learner.eval_every=2",
                   "algorithm.ssr.staleness_bound=1", "algorithm.ssr.mode=ssr")
    versions: list[int] = []
    latest: dict[str, torch.Tensor] = {}

    def on_weights(weights, version):
        versions.append(version)
        latest.clear()
        latest.update(dict(weights))

    rx = make_receiver(cfg, server_id="rx-trainer", on_weights=on_weights, initial_version=0).start()
    evals: list[int] = []
    trainer = Trainer(cfg, eval_fn=lambda step: evals.append(step) or {"accuracy": 0.25})
    # before any step: the feeder may run at most (0 + 1 + staleness_bound) steps of prompts ahead
    trainer.feeder.top_up(0, 0)
    assert trainer.feeder.state.published == cfg.learner.prompts_per_step * 2
    producer = Producer(cfg, str(tiny_model_dir)).start()
    try:
        summary = trainer.run()
    finally:
        producer.stop()
        trainer.close()
    assert summary["step"] == 4 and summary["version"] == 4 and not summary["resumed"]
    assert rx.wait_for_version(4, timeout=20)
    rx.stop()
    assert versions[0] == 0 and versions[-4:] == [1, 2, 3, 4]  # start-up sync, then one per step
    # the received weights are the learner's final ones, and the HF export of step 4 holds them too
    hf = tmp_path / "run" / "ckpt" / "step-00000004" / "hf"
    exported = dict(load_model(hf).named_parameters())
    assert set(latest) == set(exported) and all(torch.equal(latest[n], exported[n]) for n in latest)
    assert json.loads((hf / "policy_version.json").read_text())["version"] == 4
    assert (tmp_path / "run" / "ckpt" / "LATEST").read_text() == "step-00000004"
    state = read_sync_state(cfg)
    assert state["version"] == 4 and state["checkpoint"]["version"] == 4 and state["checkpoint"]["path"] == str(hf.resolve())
    pv = BufferClient(cfg).policy_version()
    assert pv.version == 4 and pv.step == 4
    assert summary["status"] == "finished"
    # metrics: every step has the promised figures; eval hook ran every 2 steps
    rows = [json.loads(line) for line in (tmp_path / "run" / "learner_metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["prefix"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for k in ("loss", "reward_mean", "effective_share", "clip_frac", "approx_kl", "grad_norm", "tokens_per_s",
                  "idle_share", "sync_s", "staleness_mean", "samples"):
            assert k in r, k
        assert 0.0 <= r["idle_share"] <= 1.0 and r["samples"] == 8 and r["sync_ok"] == 1.0
        assert r["staleness_max"] <= cfg.algorithm.ssr.staleness_bound
    assert evals == [2, 4] and [r["accuracy"] for r in rows if r["prefix"] == "eval"] == [0.25, 0.25]
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    # the feeder never ran more than staleness_bound steps ahead, and its cursor is in the checkpoint
    ck = json.loads((tmp_path / "run" / "ckpt" / "step-00000004" / "learner.json").read_text())
    assert ck["step"] == 4 and ck["feeder"]["published"] <= cfg.learner.prompts_per_step * (4 + 1 + 1)
    # ... and every step moved the window: before step 4 (3 steps done) it published up to 3 + 1 + 1 rounds
    assert ck["feeder"]["published"] == cfg.learner.prompts_per_step * (3 + 1 + 1)
    assert ck["feeder"]["cursor"] == ck["feeder"]["published"] % ck["feeder"]["num_rows"]


def _store_groups(cfg, tiny_model_dir, n: int) -> None:
    """Let a producer (rollout stand-in: real groups into the real buffer) store ``n`` groups, then stop it."""
    producer = Producer(cfg, str(tiny_model_dir)).start()
    try:
        deadline = time.monotonic() + 120
        while producer.groups < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        producer.stop()
    assert producer.groups == n


def test_each_step_moves_the_feed_window_even_when_its_data_is_ready(make_cfg, tiny_model_dir):
    """Rollouts ahead of the learner: the groups of the next step are stored before the learner asks.
    The learner still publishes the next round's prompts first, so the rollouts never run dry
    waiting for the learner to have to wait."""
    from learner.trainer import Trainer

    cfg = make_cfg("learner.total_steps=4", "learner.eval_every=0", "algorithm.ssr.staleness_bound=1", "algorithm.ssr.mode=ssr")
    pps = cfg.learner.prompts_per_step
    trainer = Trainer(cfg)
    trainer.feeder.top_up(0, 0)  # the window before any step: 0 + 1 + 1 rounds
    assert trainer.feeder.state.published == 2 * pps
    _store_groups(cfg, tiny_model_dir, 2 * pps)
    try:
        trainer.step = trainer.version = 1  # one step done; two rounds of groups stored, nothing taken yet
        trainer._groups_taken = 0
        idle = trainer.wait_for_data()
        assert idle < 5  # the data was there
        assert trainer.feeder.state.published == 3 * pps  # the window moved: 1 + 1 + 1 rounds
    finally:
        trainer.close()


def test_rounds_stored_ahead_serve_the_next_steps_without_waiting(make_cfg, tiny_model_dir):
    """Rollouts ran the whole feed window ahead (bound 2: three rounds stored, none taken). Each of
    the next three steps takes one round of them at once; none swallows the others, which would
    leave the learner waiting for rounds that had been generated ahead. A fourth step, with no
    round left and no rollouts, waits until the sample timeout."""
    from learner.trainer import Trainer

    cfg = make_cfg("learner.total_steps=8", "learner.eval_every=0", "algorithm.ssr.staleness_bound=2",
                   "algorithm.ssr.mode=ssr", "learner.sample_timeout_s=4")
    pps = cfg.learner.prompts_per_step
    trainer = Trainer(cfg)
    trainer.feeder.top_up(0, 0)
    assert trainer.feeder.state.published == 3 * pps  # the window before any step: 0 + 1 + 2 rounds
    _store_groups(cfg, tiny_model_dir, 3 * pps)
    try:
        waits = []
        for step in range(3):
            trainer.step = trainer.version = step
            waits.append(trainer.wait_for_data())
        assert max(waits) < 2.0, waits  # each step had its round stored already
        assert trainer._groups_taken == 3 * pps
        trainer.step = trainer.version = 3
        assert trainer.wait_for_data() >= 4.0  # nothing left: it waited for new groups until the timeout
    finally:
        trainer.close()


def test_rounds_without_effective_samples_do_not_stall_the_learner(make_cfg, tiny_model_dir):
    """Every response of the first rounds is right (zero advantage, nothing drawable): the learner
    asks for more prompts instead of waiting forever, then trains when effective groups arrive."""
    from learner.trainer import Trainer

    cfg = make_cfg("learner.total_steps=2", "learner.eval_every=0", "algorithm.ssr.staleness_bound=0",
                   "algorithm.ssr.mode=ssr", "learner.sample_timeout_s=600")
    trainer = Trainer(cfg)
    producer = Producer(cfg, str(tiny_model_dir))
    producer.solved_groups = 3 * cfg.learner.prompts_per_step  # three whole rounds of solved prompts
    producer.start()
    t0 = time.monotonic()
    try:
        summary = trainer.run()
    finally:
        producer.stop()
        trainer.close()
    assert summary["step"] == 2
    assert time.monotonic() - t0 < 300
    assert trainer.feeder.state.extra_rounds >= 3
    assert trainer.feeder.state_dict()["extra_rounds"] == trainer.feeder.state.extra_rounds  # checkpointed


def test_converged_policy_ends_training_early(make_cfg, tiny_model_dir):
    """With `stop_after_empty_rounds`, rounds that are all solved end the run (checkpointed) instead
    of asking for prompts forever."""
    from learner.trainer import Trainer

    cfg = make_cfg("learner.total_steps=50", "learner.eval_every=0", "algorithm.ssr.staleness_bound=0",
                   "learner.stop_after_empty_rounds=2", "learner.checkpoint_every=50")
    trainer = Trainer(cfg)
    producer = Producer(cfg, str(tiny_model_dir))
    producer.solved_groups = 10_000  # every group all-correct
    producer.start()
    try:
        summary = trainer.run()
    finally:
        producer.stop()
        trainer.close()
    assert summary["converged"] and summary["step"] == 0
    assert trainer.feeder.state.extra_rounds == 1  # one round granted, the second empty round stops


def _groups(trainer, rows, *, n_groups: int, n: int, seed: int):
    """Groups of ``n`` synthetic responses (rewards with both values) for ``n_groups`` data rows."""
    from common.schemas import Group
    from learner.synthetic import synthetic_batch

    samples, tasks = synthetic_batch(trainer.policy.module, trainer.processor, rows, n_prompts=n_groups, n=n, seed=seed,
                                     min_pixels=3136, max_pixels=12544)
    out = []
    for task in tasks.values():
        mine = [s for s in samples if s.task_id == task.task_id]
        out.append(Group(group_id=mine[0].group_id, task=task, samples=mine, policy_version=0))
    return out


@pytest.mark.parametrize("policy", ["train", "wait"])
def test_a_short_batch_is_never_padded_by_repetition(make_cfg, synth_rows, policy):
    """The buffer can fill only 6 of 8 rows (reuse cap 1, no replay yet): `train` trains the 6 as
    drawn (batch_fill 0.75); `wait` keeps them and completes the batch from the next round."""
    import threading

    from learner.trainer import Trainer

    cfg = make_cfg("algorithm.ssr.mode=ssr", "algorithm.ssr.reuse_cap=1", f"learner.short_batch={policy}",
                   "learner.eval_every=0")
    trainer = Trainer(cfg, poll_s=0.02)
    first = _groups(trainer, synth_rows, n_groups=2, n=3, seed=0)
    trainer.buffer.add_groups(first)
    later = threading.Timer(1.0, lambda: trainer.buffer.add_groups(_groups(trainer, synth_rows[2:], n_groups=2, n=3, seed=1)))
    later.start()
    try:
        batch, idle = trainer.next_batch()
        items, errors = trainer.items_for(batch)
        stats = trainer._batch_stats(batch)
    finally:
        later.cancel()
        trainer.close()
    assert not errors
    ids = [it.sample_id for it in items]
    assert len(ids) == len(set(ids))  # no row twice: the reuse cap of 1 holds in the batch
    if policy == "train":
        assert len(items) == 6 and stats["batch_fill"] == pytest.approx(0.75)
        assert {s.sample_id for s in batch.samples} == {s.sample_id for g in first for s in g.samples}
    else:
        assert len(items) == 8 and stats["batch_fill"] == 1.0 and idle >= 0.5
        assert trainer.feeder.state.extra_rounds == 1  # the wait asked the feeder for one more round


@pytest.mark.slow
@pytest.mark.timeout(400)  # a learner that waited for its lost tasks would sit out sample_timeout_s (600 s)
def test_redis_restart_without_persistence_is_reported_and_training_carries_on(make_cfg, tiny_model_dir, tmp_path):
    """A private redis-server without persistence is killed and restarted empty after step 2: the
    learner says what was lost (buffer_store_lost), is granted a new feed window and trains on."""
    import shutil
    import signal
    import subprocess
    import threading

    import redis

    from learner.trainer import Trainer
    from rethinker.local_redis import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(port=port)
        for _ in range(200):
            try:
                r.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    server = {"proc": start_redis()}
    cfg = make_cfg(f"redis.url=redis://127.0.0.1:{port}/0", "learner.total_steps=5", "learner.checkpoint_every=50",
                   "algorithm.ssr.staleness_bound=1")
    trainer = Trainer(cfg)
    producer = Producer(cfg, str(tiny_model_dir)).start()
    restarted = threading.Event()

    def restart_after_step_2() -> None:
        while trainer.step < 2:
            time.sleep(0.02)
        server["proc"].send_signal(signal.SIGKILL)
        server["proc"].wait()
        server["proc"] = start_redis()  # empty: no AOF, no RDB
        restarted.set()

    killer = threading.Thread(target=restart_after_step_2, daemon=True)
    killer.start()
    try:
        summary = trainer.run()
    finally:
        producer.stop()
        trainer.close()
        server["proc"].send_signal(signal.SIGKILL)
        server["proc"].wait()
    assert restarted.is_set() and summary["step"] == 5 and summary["version"] == 5
    assert trainer.store_resets == 1
    assert trainer.feeder.state.published > cfg.learner.prompts_per_step * 5  # the window was granted again
