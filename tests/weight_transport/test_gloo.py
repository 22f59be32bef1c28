"""gloo weight transport: bucketing, bit-identical broadcast to receiver processes, tokens, late
joiners, and a receiver killed in the middle of a round."""

from __future__ import annotations

import json
import time

import pytest
import redis
import torch
from safetensors.torch import load_file, save_file

from common.redis_keys import RedisKeys
from weight_transport import TensorSpec, make_receiver, make_sender, plan_buckets, read_sync_state
from weight_transport.base import token_proof


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(12):
        dt = torch.bfloat16 if i % 3 == 0 else torch.float32
        shape = (17 + 13 * i, 9) if i % 2 else (301 * (i + 1),)
        out[f"layer.{i}.weight"] = torch.randn(*shape, generator=g).to(dt)
    out["big.weight"] = torch.randn(200, 100, generator=g)  # 80 kB > one 10 kB bucket
    return out


def _send(tx, weights, version):
    specs = [TensorSpec.of(n, t) for n, t in weights.items()]
    return tx.sync(specs, iter(weights.values()), version=version, step=version * 10)


def _wait_members(tx, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(tx.members()) >= n:
            return tx.members()
        time.sleep(0.05)
    raise TimeoutError(f"only {sorted(tx.members())} registered")


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_plan_buckets_is_per_dtype_bounded_and_complete():
    specs = [TensorSpec(f"t{i}", "bfloat16" if i % 2 else "float32", (10 * (i + 1),)) for i in range(10)]
    specs.append(TensorSpec("huge", "float32", (1000,)))
    plan = plan_buckets(specs, 160)
    seen = sorted(i for b in plan for i in b.indices)
    assert seen == list(range(11))  # every tensor exactly once
    for b in plan:
        assert {specs[i].dtype for i in b.indices} == {b.dtype}
        assert b.numel == sum(specs[i].numel for i in b.indices)
        assert b.nbytes <= 160 or len(b.indices) == 1
    # indices in a bucket keep manifest order, and the plan is deterministic
    assert all(list(b.indices) == sorted(b.indices) for b in plan)
    assert plan == plan_buckets(specs, 160)
    # float32 bucket of t0 (40 B) + t2 (120 B) = 160 fits; t4 (200 B) opens a new one
    assert plan[0].indices == (0, 2)


def test_sync_without_members_drains_and_publishes(wt_cfg):
    tx = make_sender(wt_cfg)
    consumed = []

    def gen():
        for i in range(3):
            consumed.append(i)
            yield torch.ones(4)

    rep = tx.sync([TensorSpec(f"x{i}", "float32", (4,)) for i in range(3)], gen(), version=3)
    assert rep.ok and rep.joined == [] and consumed == [0, 1, 2]
    assert read_sync_state(wt_cfg)["version"] == 3


@pytest.mark.slow
def test_two_receivers_get_bit_identical_weights_and_versions(wt_cfg, receivers, tmp_path):
    bad_cfg = wt_cfg.model_copy(deep=True)
    bad_cfg.learner.weight_sync.token = "wrong"
    rx = [receivers(wt_cfg, "srv-a"), receivers(wt_cfg, "srv-b"), receivers(bad_cfg, "srv-intruder")]
    for p in rx:
        p.wait_ready()
    tx = make_sender(wt_cfg)
    members = _wait_members(tx, 2)
    time.sleep(0.3)
    assert sorted(members) == ["srv-a", "srv-b"]  # the wrong token is never invited

    for version in (1, 2):
        w = _weights(seed=version)
        rep = _send(tx, w, version)
        assert rep.ok, rep.error
        assert rep.joined == ["srv-a", "srv-b"]
        assert rep.num_bytes == sum(t.numel() * t.element_size() for t in w.values())
        assert rep.num_buckets > 5  # 10 kB buckets: really bucketed
        for p in rx[:2]:
            got = load_file(str(p.wait_file(version)))
            assert set(got) == set(w)
            for name, t in w.items():
                assert _bitwise_equal(got[name], t), name
    assert not list((tmp_path / "srv-intruder").glob("*.safetensors"))
    state = read_sync_state(wt_cfg)
    assert state["version"] == 2 and state["last_result"]["ok"]
    # join records report what each server loaded
    r = redis.Redis.from_url(wt_cfg.redis.url)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        recs = {k.decode(): json.loads(v) for k, v in r.hgetall(RedisKeys(wt_cfg.redis.namespace).sync_members).items()}
        if all(recs[s]["loaded_version"] == 2 for s in ("srv-a", "srv-b")):
            break
        time.sleep(0.1)
    assert recs["srv-a"]["loaded_version"] == 2 and recs["srv-b"]["loaded_version"] == 2
    assert recs["srv-intruder"]["proof"] != token_proof("s3cret", "srv-intruder")

    # a late joiner: loads the published checkpoint first, then is included in the next round
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    w2 = _weights(seed=2)
    save_file({k: v.contiguous() for k, v in w2.items()}, str(ckpt / "model.safetensors"))
    tx.publish_checkpoint(str(ckpt), version=2, step=20)
    seen: list[tuple[int, dict]] = []
    late = make_receiver(wt_cfg, server_id="srv-late", on_weights=lambda ws, v: seen.append((v, dict(ws))), initial_version=0)
    late.start()
    try:
        assert late.loaded_version == 2 and seen[0][0] == 2
        assert all(_bitwise_equal(seen[0][1][k], w2[k]) for k in w2)
        _wait_members(tx, 3)
        w3 = _weights(seed=3)
        rep = _send(tx, w3, 3)
        assert rep.ok and rep.joined == ["srv-a", "srv-b", "srv-late"]
        assert late.wait_for_version(3, timeout=10)
        assert all(_bitwise_equal(seen[-1][1][k], w3[k]) for k in w3)
    finally:
        late.stop()


@pytest.mark.slow
def test_receiver_killed_mid_round_does_not_hang_the_sender(wt_cfg, receivers):
    dying_cfg = wt_cfg.model_copy(deep=True)
    dying_cfg.learner.weight_sync.staging = "stream"
    good, dying = receivers(wt_cfg, "srv-good"), receivers(dying_cfg, "srv-dying", "--die-mid-round")
    good.wait_ready()
    dying.wait_ready()
    tx = make_sender(wt_cfg)
    _wait_members(tx, 2)
    t0 = time.monotonic()
    rep = _send(tx, _weights(seed=1), 1)
    took = time.monotonic() - t0
    assert not rep.ok and "srv-dying" in rep.failed
    assert took < wt_cfg.learner.weight_sync.join_timeout_s + 3 * wt_cfg.learner.weight_sync.timeout_s
    assert dying.proc.wait(timeout=10) == -9
    # the next round is rebuilt without the dead member and reaches the survivor
    w = _weights(seed=2)
    rep = _send(tx, w, 2)
    assert rep.ok, rep.error
    assert rep.joined == ["srv-good"]
    got = load_file(str(good.wait_file(2)))
    assert all(_bitwise_equal(got[k], w[k]) for k in w)


@pytest.mark.slow
def test_a_frozen_member_is_left_out_after_the_join_timeout(wt_cfg, receivers):
    import os
    import signal

    cfg = wt_cfg.model_copy(deep=True)
    cfg.learner.weight_sync.join_timeout_s = 1.5
    good, frozen = receivers(cfg, "srv-live"), receivers(cfg, "srv-frozen")
    good.wait_ready()
    frozen.wait_ready()
    tx = make_sender(cfg)
    _wait_members(tx, 2)
    os.kill(frozen.proc.pid, signal.SIGSTOP)  # alive for the OS, its join record still fresh, but silent
    try:
        t0 = time.monotonic()
        rep = _send(tx, _weights(seed=5), 5)
        took = time.monotonic() - t0
        assert rep.ok and rep.joined == ["srv-live"] and rep.failed == ["srv-frozen"]
        assert 1.5 <= took < 1.5 + 3.0
        good.wait_file(5)
        # the next round does not wait for it again (it sits out after a failure)
        t0 = time.monotonic()
        rep = _send(tx, _weights(seed=6), 6)
        assert rep.ok and rep.invited == ["srv-live"] and time.monotonic() - t0 < 1.0
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
