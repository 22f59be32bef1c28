"""Chaos test of the live system: `rethinker up` on the tiny CPU configuration (own supervised Redis
with AOF, two rollout servers, 4 prompts per step, a checkpoint every 2 steps); one at a time, a
rollout server, the verifier, the buffer service and the learner are killed with SIGKILL and the
Redis server is killed and restarted by the launcher.  Asserted: every process was restarted by
the launcher, the learner finished a step within 60 s of each fault, the learner resumed from its
last complete checkpoint and its steps count on from there, the published policy version never went
back, no prompt task was lost, no group was stored twice, and after SIGTERM no process of the run
is left.  Part of ``make test`` (2-3 minutes on a loaded 2-core machine); ``make test-chaos`` runs
it alone."""

from __future__ import annotations

import json

import pytest

from rethinker.chaos import FAULTS, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(1800)]

RECOVERY_BUDGET_S = 60.0


def test_system_survives_each_fault(tmp_path):
    rep = run_chaos(tmp_path, recovery_timeout_s=RECOVERY_BUDGET_S)
    summary = rep.as_dict()
    print(json.dumps({k: summary[k] for k in summary if k not in ("steps", "versions_seen")}))
    assert not rep.error, rep.error
    assert [f.fault for f in rep.faults] == list(FAULTS)
    for f in rep.faults:
        assert f.restarted_s is not None, f"{f.target} was not restarted by the launcher"
        assert f.recovery_s is not None and f.recovery_s <= RECOVERY_BUDGET_S, (
            f"no learner step within {RECOVERY_BUDGET_S:.0f}s of killing {f.target}: {f}")
    learner = next(f for f in rep.faults if f.fault == "learner")
    assert learner.checkpoint_before is not None and learner.learner_resumed_at == learner.checkpoint_before
    assert learner.next_step == learner.checkpoint_before + 1
    # steps count up by one, except once: after the learner restart, on from the checkpoint
    backs = [(a, b) for a, b in zip(rep.steps, rep.steps[1:]) if b != a + 1]
    if learner.step_before == learner.checkpoint_before:
        assert backs == [], rep.steps
    else:
        assert len(backs) == 1 and backs[0][1] == learner.checkpoint_before + 1, rep.steps
    assert not rep.version_went_back, rep.versions_seen
    assert rep.published_tasks > 0 and rep.lost_tasks == 0, rep.lost_examples
    assert rep.duplicate_groups == 0
    assert rep.launcher_rc == 0 and rep.stray_processes == [], rep.stray_processes
