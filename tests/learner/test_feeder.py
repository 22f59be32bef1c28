"""Prompt feeding against the real buffer queue: staleness pacing, backpressure, epochs, resume."""

from __future__ import annotations

from learner.feeder import PromptFeeder


def _claim_all(client, n=1000):
    out = []
    while True:
        got = client.claim_tasks("t", 64, block_ms=10)
        if not got:
            return out
        for ct in got:
            client.ack_task(ct.entry_id)
        out += [ct.task for ct in got]
        if len(out) >= n:
            return out


def test_pacing_backpressure_epochs_and_resume(make_cfg, synth_rows):
    from services.buffer.client import BufferClient

    rows = synth_rows[:5]
    cfg = make_cfg("algorithm.ssr.staleness_bound=1", "learner.prompts_per_step=2", "buffer.max_inflight_tasks=3")
    client = BufferClient(cfg)
    feeder = PromptFeeder(cfg, rows, publish=client.publish_tasks, can_publish=client.can_publish, batch=2)
    # quota at step 0 is 2 x (0 + 1 + 1) = 4, but the queue takes 3 at most
    assert feeder.quota(0) == 4
    assert feeder.top_up(0, version=0) == 3
    assert client.inflight_tasks() == 3 and feeder.quota(0) == 1
    first = _claim_all(client)
    assert [t.policy_version for t in first] == [0, 0, 0] and len({t.task_id for t in first}) == 3
    assert feeder.top_up(0, version=0) == 1  # the rest of the step-0 quota
    assert feeder.top_up(0, version=0) == 0  # pacing: nothing more before step 1
    got = _claim_all(client)
    assert feeder.top_up(1, version=1) == 2  # step 1 allows 2 more
    got += _claim_all(client)
    state = feeder.state_dict()
    assert state["published"] == 6 and state["epoch"] == 1 and state["cursor"] == 1  # 5 rows: wrapped once
    seen = [t.prompt_id for t in first + got]
    assert sorted(seen[:5]) == sorted(r.qid for r in rows)  # epoch 0 visits every row once
    assert got[-1].task_id.endswith(":e1")
    # a restarted feeder from this state continues with the same next row
    nxt = PromptFeeder(cfg, rows, publish=client.publish_tasks, can_publish=client.can_publish)
    nxt.load_state_dict(state)
    ref = PromptFeeder(cfg, rows, publish=lambda tasks: None, can_publish=None)
    ref.load_state_dict(state)
    assert nxt._next_rows(3) == ref._next_rows(3)
    # a feeder restarted from an older checkpoint (here: the very start) republishes tasks the buffer
    # already has: duplicates, not counted as published, and it moves on to new work in the same call
    # (counting them as published starved a restarted learner until sample_timeout_s)
    old = PromptFeeder(cfg, rows, publish=client.publish_tasks, can_publish=client.can_publish, batch=2)
    assert old.top_up(0, version=0) == 3
    assert old.state.duplicates == 6 and old.state.published == 3
    ref2 = PromptFeeder(cfg, rows, publish=lambda tasks: None, can_publish=None)
    ref2.load_state_dict(state)
    expect = [f"{rows[i].qid}:e{e}" for e, i in ref2._next_rows(3)]
    assert [t.task_id for t in _claim_all(client)] == expect  # exactly the rows after the crash point


def test_sync_mode_publishes_one_round_per_step(make_cfg, synth_rows):
    """learner.sync_mode=sync: the staleness bound is 0 whatever algorithm.ssr.staleness_bound says,
    so the feeder publishes exactly the round of the step in progress."""
    from common.staleness import staleness_bound
    from services.buffer.client import BufferClient

    cfg = make_cfg("algorithm.ssr.staleness_bound=3", "learner.prompts_per_step=2", "learner.sync_mode=sync")
    assert staleness_bound(cfg) == 0
    assert staleness_bound(make_cfg("algorithm.ssr.staleness_bound=3")) == 3
    client = BufferClient(cfg)
    feeder = PromptFeeder(cfg, synth_rows[:5], publish=client.publish_tasks, can_publish=client.can_publish)
    assert feeder.top_up(0, version=0) == 2
    assert feeder.top_up(0, version=0) == 0
    _claim_all(client)
    assert feeder.top_up(1, version=1) == 2 and feeder.top_up(1, version=1) == 0
