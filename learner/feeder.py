"""Prompt feeding: the learner owns the dataset and publishes ``PromptTask``s at the pace it trains.

Pacing (staleness bound ``k``, ``common.staleness.staleness_bound``): by the time the learner has finished
step ``s`` it has published at most ``prompts_per_step * (s + 1 + k + extra)`` tasks in total, so
rollout servers never run more than ``k`` versions ahead of what the learner can train on; ``extra``
counts rounds whose groups all had zero advantage (nothing drawable: the vanishing-advantages end
state), granted so that the learner keeps asking for new prompts instead of waiting forever.  On top
of that the buffer's own queue backpressure (``BufferClient.can_publish()``) is respected.

Order: epoch ``e`` visits every row once in the permutation drawn from ``run.seed + e``; the task id
is ``<qid>:e<epoch>`` (``common.data.loader.to_prompt_task``), so a republication after a restart is a
duplicate that the buffer ignores.  ``state_dict()`` (epoch, cursor, published counts) goes into the
learner checkpoint and ``load_state_dict`` resumes exactly there.

After a restart from a checkpoint older than the crash, the rows between the checkpoint's cursor and
the crash were already published: the buffer reports them as duplicates, they do not count towards
the quota (their groups were stored, and trained on, before the crash), and the feeder moves on to
rows that are new work in the same call.  So a restarted learner gets its next round of new tasks at
once instead of waiting for groups that will never come.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from common.config import RethinkerConfig
from common.data.schema import DataRow
from common.logging import get_logger
from common.schemas import PromptTask
from common.schemas.buffer import PublishResult
from common.staleness import staleness_bound

log = get_logger("learner.feeder")


@dataclass
class FeederState:
    epoch: int = 0
    cursor: int = 0  # position in the epoch's permutation
    published: int = 0  # tasks the buffer accepted as new work (duplicates not included)
    duplicates: int = 0  # tasks the buffer already had (republished after a restart)
    skipped: int = 0  # rows that could not be turned into tasks (unreadable image ...)
    pending: list = field(default_factory=list)  # [epoch, row index] refused by backpressure: sent first next time
    extra_rounds: int = 0  # rounds granted without a step: their groups had nothing to train on


class PromptFeeder:
    def __init__(
        self,
        cfg: RethinkerConfig,
        rows: Sequence[DataRow],
        *,
        publish: Callable[[list[PromptTask]], PublishResult | None],
        can_publish: Callable[[], int] | None = None,
        batch: int = 64,
    ) -> None:
        if not rows:
            raise ValueError(f"data.train_path: no training rows in {cfg.data.train_path!r} after selection")
        self.cfg = cfg
        self.rows = list(rows)
        self._publish = publish
        self._can_publish = can_publish
        self.batch = batch
        self.state = FeederState()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.cfg.run.seed + epoch).permutation(len(self.rows))

    # ---- pacing
    def quota(self, step: int) -> int:
        """Tasks the learner may still publish before finishing ``step`` (0-based: the step in progress)."""
        lc, k = self.cfg.learner, staleness_bound(self.cfg)
        return max(0, lc.prompts_per_step * (step + 1 + k + self.state.extra_rounds) - self.state.published)

    def grant_round(self) -> None:
        """One more round of ``prompts_per_step`` tasks without a learner step: the last round's groups
        all had zero advantage (every response right, or every one wrong), so there is nothing to
        train on and the learner must not wait for a step that cannot come."""
        self.state.extra_rounds += 1

    def regrant_window(self, step: int) -> None:
        """The tasks in flight may be lost (Redis came back with less than it had): count only what
        finished steps consumed as published, so that a full window of ``k + 1`` rounds can be
        published again."""
        pps = self.cfg.learner.prompts_per_step
        before = self.state.published
        self.state.published = min(self.state.published, pps * (step + self.state.extra_rounds))
        log.warning("feed_window_regranted", step=step, published_before=before, published_now=self.state.published)

    def _next_rows(self, n: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while self.state.pending and len(out) < n:
            e, i = self.state.pending.pop(0)
            out.append((int(e), int(i)))
        while len(out) < n:
            if self.state.cursor >= len(self._order):
                self.state.epoch += 1
                self.state.cursor = 0
                self._order = self._permutation(self.state.epoch)
                log.info("epoch_start", epoch=self.state.epoch)
            out.append((self.state.epoch, int(self._order[self.state.cursor])))
            self.state.cursor += 1
        return out

    def top_up(self, step: int, version: int) -> int:
        """Publish as many tasks as pacing and backpressure allow; returns how many were accepted."""
        from common.data.loader import to_prompt_task

        want = self.quota(step)
        if self._can_publish is not None and want > 0:
            want = min(want, max(0, int(self._can_publish())))
        done = 0
        while want > 0:
            n = min(want, self.batch)
            tasks: list[PromptTask] = []
            where: dict[str, tuple[int, int]] = {}
            for epoch, idx in self._next_rows(n):
                row = self.rows[idx]
                try:
                    task = to_prompt_task(
                        row,
                        epoch=epoch,
                        n=self.cfg.algorithm.sampling.n,
                        prompt_suffix=self.cfg.data.prompt_suffix,
                        policy_version=version,
                    )
                except Exception as exc:  # noqa: BLE001 - a bad row is skipped, never fatal
                    self.state.skipped += 1
                    log.warning("task_skipped", qid=row.qid, error=str(exc))
                    continue
                tasks.append(task)
                where[task.task_id] = (epoch, idx)
            deferred: list[str] = []
            n_dups = 0
            if tasks:
                result = self._publish(tasks)
                dups = getattr(result, "duplicates", None) or []
                deferred = list(getattr(result, "deferred", None) or [])
                n_dups = len(dups) if isinstance(dups, (list, tuple)) else int(dups)
                self.state.duplicates += n_dups
                if n_dups:
                    log.info("republished_duplicates", count=n_dups, epoch=self.state.epoch, cursor=self.state.cursor)
            accepted = len(tasks) - len(deferred) - n_dups
            self.state.published += accepted
            done += accepted
            if deferred:  # the queue is full: keep them for the next call, in order
                self.state.pending = [list(where[t]) for t in deferred if t in where] + self.state.pending
                break
            # duplicates and skipped rows are no work: the next rows take their place
            want -= accepted if tasks else 0
            if not tasks and n:  # every row of this batch was unusable: they still count as tried
                want -= n
        return done

    # ---- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state) | {"num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("num_rows", len(self.rows))) != len(self.rows):
            log.warning("dataset_size_changed", saved=state.get("num_rows"), now=len(self.rows))
        self.state = FeederState(
            **{k: int(state[k]) for k in FeederState.__dataclass_fields__ if k in state and k != "pending"},
            pending=[list(p) for p in state.get("pending") or []],
        )
        self._order = self._permutation(self.state.epoch)
        self.state.cursor = min(self.state.cursor, len(self._order))
