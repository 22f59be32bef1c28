"""The actor loop: claim prompt tasks, generate groups, score, force rethinking, store, ack.

One iteration (``Actor.run``)::

    wait until no weight swap is pending          (SwapGate: swaps happen between batches)
    pause while the policy lags (backpressure)     (learner version - loaded version > staleness bound)
    claim up to rollout.batch_prompts tasks        (buffer queue; first, at start, the tasks still pending
                                                    under this server's id from before a crash;
                                                    other servers' unacked tasks after
                                                    buffer.reclaim_idle_s)
    build_groups(tasks):
        first pass: n samples per task             (one batched engine call, sampling from config)
        score every response                       (verifier over HTTP, matched by sample id)
        Forced Rethinking (spec section 4)         (rethink.py: select, truncate, trigger; continue;
                                                    score the rethought responses by their own ids;
                                                    keep correct ones within limits; replace originals)
    add_group (idempotent by group id), then ack   (a crash between the two duplicates nothing)

Failure handling: an unreachable verifier is waited for (the batch's responses are kept and its
claims extended while it retries with backoff, ``rollout.verifier_outage_*``); if a batch fails
(engine, verifier down past ``rollout.verifier_outage_max_s``, buffer), its unacked tasks
are released to the queue and the loop backs off; a task that keeps failing
(``rollout.max_task_deliveries``) or cannot be encoded (bad image, too long) is acked without a
group and counted as rejected, so it never blocks the queue.  ``request_stop()`` lets the current
batch finish; cancelling the task releases the unacked ones.

Ids: group ``g-<task_id>`` (``group_id_for``); first-pass sample ``<group>:<i>``; rethought sample
``<group>:<i>:r``.  Verdicts are matched by these ids.  Sampling seeds and rethinking decisions
derive from ``run.seed`` and the task id, so a retried task reproduces its decisions.

Versions: every sample carries the version of the weights that produced it; a rethought response
carries the older of its first pass and its continuation (they differ only with
``rollout.partial_rollouts``, when swaps may happen between the two; the newer one is recorded in
``timings["policy_version_newest"]``).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from common.config import RethinkerConfig
from common.interfaces import ActorBuffer, Scorer
from common.logging import get_logger
from common.schemas import Group, PromptTask, Sample, group_id_for
from common.schemas.buffer import ClaimedTask
from common.schemas.verifier import VerifyItem, VerifyResult
from common.staleness import staleness_bound
from services.rollout import rethink
from services.rollout.engines.base import Completion, Engine, GenerationRequest, GenerationResult, PromptInputs, SamplingParams

log = get_logger("rollout.actor")


def task_seed(run_seed: int, task_id: str, salt: str = "") -> int:
    return zlib.crc32(f"{run_seed}:{task_id}:{salt}".encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------- stats


@dataclass
class RethinkStats:
    """Forced-rethinking counters; accuracy before/after over the triggered candidates."""

    triggered: int = 0
    kept: int = 0
    y1_correct: int = 0  # triggered candidates whose first pass was correct
    y2_correct: int = 0  # triggered candidates whose rethought response was correct
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        t = self.triggered
        return {
            "triggered": t,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "accuracy_before": self.y1_correct / t if t else None,
            "accuracy_after": self.y2_correct / t if t else None,
        }


@dataclass
class ActorStats:
    batches: int = 0
    batch_errors: int = 0
    verifier_waits: int = 0  # scoring attempts that found the verifier unreachable and waited
    tasks_claimed: int = 0
    tasks_acked: int = 0
    tasks_released: int = 0
    tasks_rejected: int = 0
    groups_stored: int = 0
    groups_duplicate: int = 0
    samples: int = 0
    first_pass_correct: int = 0
    in_flight_tasks: int = 0
    paused: str | None = None
    last_error: str = ""
    rethink: RethinkStats = field(default_factory=RethinkStats)
    # Wall seconds by activity (TIME_KEYS): where a server's time goes, engine work or waiting.
    seconds: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("rethink", "seconds")}
        d["first_pass_accuracy"] = self.first_pass_correct / self.samples if self.samples else None
        d["rethink"] = self.rethink.as_dict()
        d["seconds"] = {k: round(self.seconds[k], 3) for k in TIME_KEYS}
        return d


# What ``ActorStats.seconds`` counts: claiming tasks (including the blocking wait for one), encoding
# prompts, first-pass generation, scoring round trips to the verifier, rethinking continuations,
# storing groups and acking tasks, paused (stale weights, buffer unreachable), waiting for a weight
# swap to finish before the next batch.
TIME_KEYS = ("claim", "encode", "generate", "score", "continue", "store", "paused", "swap_wait")


# --------------------------------------------------------------------------- swap gate


class SwapGate:
    """Keeps weight swaps between actor batches.

    ``async with gate.batch():`` wraps one actor batch; ``async with gate.swap():`` wraps one
    weight load.  A pending swap holds new batches back and (unless ``partial`` is set) waits for
    the running batch to end, so every response of a batch -- first pass and rethinking
    continuation -- comes from one weight set.  With ``partial`` the swap only waits for the engine
    call in flight (the engine's own lock), and versions are recorded per sample.
    """

    def __init__(self, partial: bool = False) -> None:
        self.partial = partial
        self._cond = asyncio.Condition()
        self.active = 0
        self.pending = 0

    def batch(self) -> "_GateCtx":
        return _GateCtx(self, swap=False)

    def swap(self) -> "_GateCtx":
        return _GateCtx(self, swap=True)

    async def _enter(self, swap: bool) -> None:
        async with self._cond:
            if swap:
                self.pending += 1
                if not self.partial:
                    await self._cond.wait_for(lambda: self.active == 0)
            else:
                await self._cond.wait_for(lambda: self.pending == 0)
                self.active += 1

    async def _exit(self, swap: bool) -> None:
        async with self._cond:
            if swap:
                self.pending -= 1
            else:
                self.active -= 1
            self._cond.notify_all()

    async def wait_no_swap(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.pending == 0)


class _GateCtx:
    def __init__(self, gate: SwapGate, swap: bool) -> None:
        self.gate, self.is_swap = gate, swap

    async def __aenter__(self) -> None:
        await self.gate._enter(self.is_swap)

    async def __aexit__(self, *exc: object) -> None:
        await self.gate._exit(self.is_swap)


# --------------------------------------------------------------------------- group building


@dataclass
class TaskOutcome:
    task: PromptTask
    group: Group | None = None
    error: str = ""  # a non-retryable problem with the task itself (bad image, too long)


class GroupBuilder:
    """Generation + scoring + Forced Rethinking for a batch of tasks (no queue, no store)."""

    def __init__(self, cfg: RethinkerConfig, engine: Engine, scorer: Scorer, server_id: str = "", stats: ActorStats | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.scorer = scorer
        self.server_id = server_id
        self.stats = stats or ActorStats()
        self.should_stop: Callable[[], bool] = lambda: False
        self.keepalive: Callable[[], Awaitable[None]] | None = None  # called while waiting for the verifier

    async def _score(self, items: list[VerifyItem]) -> dict[str, VerifyResult]:
        t0 = time.perf_counter()
        try:
            return await self._score_waiting(items)
        finally:
            self.stats.seconds["score"] += time.perf_counter() - t0

    async def _score_waiting(self, items: list[VerifyItem]) -> dict[str, VerifyResult]:
        """Score through the verifier; while it is unreachable, wait and retry with backoff
        (``rollout.verifier_outage_backoff_s`` doubling up to ``..._backoff_max_s``) for at most
        ``rollout.verifier_outage_max_s`` (0: until it is back or the server stops), keeping the
        batch's claims alive.  The generated responses are kept, nothing is dropped or stored twice."""
        rc = self.cfg.rollout
        delay, t0 = rc.verifier_outage_backoff_s, time.monotonic()
        while True:
            try:
                return await self.scorer.score(items)
            except Exception as exc:  # noqa: BLE001 - only an unreachable verifier is waited for
                if not getattr(exc, "unavailable", False) or self.should_stop():
                    raise
                waited = time.monotonic() - t0
                if rc.verifier_outage_max_s and waited >= rc.verifier_outage_max_s:
                    raise
                self.stats.verifier_waits += 1
                log.warning("verifier_unavailable_retrying", server_id=self.server_id, waited_s=round(waited, 1),
                            retry_in_s=delay, error=str(exc)[:300])
                if self.keepalive is not None:
                    try:
                        await self.keepalive()
                    except Exception as kexc:  # noqa: BLE001 - Redis may be down too
                        log.warning("claims_keepalive_failed", error=str(kexc)[:300])
                until = time.monotonic() + delay
                while time.monotonic() < until and not self.should_stop():  # a stop ends the wait early
                    await asyncio.sleep(min(0.25, until - time.monotonic()))
                delay = min(2 * delay, rc.verifier_outage_backoff_max_s)

    def _sampling(self, task: PromptTask) -> SamplingParams:
        s = self.cfg.algorithm.sampling
        return SamplingParams.from_config(s, seed=task_seed(self.cfg.run.seed, task.task_id))

    def _cont_sampling(self, task: PromptTask) -> SamplingParams:
        s, r = self.cfg.algorithm.sampling, self.cfg.algorithm.rethink
        return SamplingParams(
            n=1,
            temperature=r.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=r.max_continuation_tokens,
            seed=task_seed(self.cfg.run.seed, task.task_id, "rethink"),
        )

    async def build(self, tasks: Sequence[PromptTask]) -> list[TaskOutcome]:
        outcomes = [TaskOutcome(t) for t in tasks]
        prompts: dict[int, PromptInputs] = {}
        t_enc = time.perf_counter()
        for k, t in enumerate(tasks):
            try:
                prompts[k] = self.engine.encode_prompt(t)
            except Exception as exc:  # noqa: BLE001 - the task's own data is bad
                outcomes[k].error = f"cannot encode prompt: {type(exc).__name__}: {exc}"
        live = sorted(prompts)
        t0 = time.perf_counter()
        self.stats.seconds["encode"] += t0 - t_enc
        if not live:
            return outcomes
        reqs = [GenerationRequest(group_id_for(tasks[k]), prompts[k], self._sampling(tasks[k])) for k in live]
        results = await self.engine.generate(reqs)
        gen_s = time.perf_counter() - t0
        self.stats.seconds["generate"] += gen_s

        # First-pass samples and their verdicts.
        samples: dict[int, list[Sample]] = {}
        first: dict[int, list[Completion]] = {}
        items = []
        for k, res in zip(live, results):
            task = tasks[k]
            gid = group_id_for(task)
            first[k] = res.completions
            samples[k] = [self._sample(task, gid, f"{gid}:{i}", res, c) for i, c in enumerate(res.completions)]
            items += [self._item(task, s, rethought=False) for s in samples[k]]
        t1 = time.perf_counter()
        verdicts = await self._score(items)
        score_s = time.perf_counter() - t1
        for k in live:
            for s in samples[k]:
                self._apply_verdict(s, verdicts[s.sample_id])

        triggered = {k: 0 for k in live}
        kept = {k: 0 for k in live}
        rethink_s = 0.0
        rc = self.cfg.algorithm.rethink
        batch_version = min((r.policy_version for r in results), default=0)
        if rc.enabled and batch_version >= rc.start_version:  # stage 2 of the recipe starts there
            t2 = time.perf_counter()
            triggered, kept = await self._rethink(tasks, live, prompts, samples, first)
            rethink_s = time.perf_counter() - t2

        for k in live:
            task, group_samples = tasks[k], samples[k]
            for s in group_samples:
                s.timings.update(generate_s=gen_s, score_s=score_s, rethink_s=rethink_s)
            n_first_correct = sum(v.correct for v in (verdicts[f"{group_id_for(task)}:{i}"] for i in range(len(first[k]))))
            self.stats.samples += len(first[k])
            self.stats.first_pass_correct += n_first_correct
            outcomes[k].group = Group(
                group_id=group_id_for(task),
                task=task,
                samples=group_samples,
                server_id=self.server_id,
                policy_version=min(s.policy_version for s in group_samples),
                rethink_triggered=triggered[k],
                rethink_kept=kept[k],
                first_pass_accuracy=n_first_correct / len(first[k]) if first[k] else 0.0,
            )
        return outcomes

    # ---- forced rethinking
    async def _rethink(
        self,
        tasks: Sequence[PromptTask],
        live: list[int],
        prompts: dict[int, PromptInputs],
        samples: dict[int, list[Sample]],
        first: dict[int, list[Completion]],
    ) -> tuple[dict[int, int], dict[int, int]]:
        rcfg = self.cfg.algorithm.rethink
        tok = self.engine.tokenizer
        plans: list[tuple[int, rethink.RethinkPlan]] = []
        for k in live:
            rng = random.Random(f"{self.cfg.run.seed}:{tasks[k].task_id}:rethink")
            views = [
                rethink.FirstPassView(
                    index=i,
                    token_ids=self.engine.strip_eos(c.token_ids),
                    text=c.text,
                    eos=c.finish_reason == "stop",
                    correct=samples[k][i].correct,
                )
                for i, c in enumerate(first[k])
            ]
            plans += [(k, p) for p in rethink.plan_group(views, rcfg, rng, tok)]
        triggered = {k: 0 for k in live}
        kept = {k: 0 for k in live}
        if not plans:
            return triggered, kept
        reqs = [
            GenerationRequest(
                f"{samples[k][p.index].sample_id}:r", prompts[k], self._cont_sampling(tasks[k]), prefix_token_ids=p.prefix_token_ids
            )
            for k, p in plans
        ]
        t0 = time.perf_counter()
        conts = await self.engine.continue_from(reqs)
        self.stats.seconds["continue"] += time.perf_counter() - t0
        candidates: list[tuple[int, rethink.RethinkPlan, Sample, Completion]] = []
        items = []
        for (k, plan), res in zip(plans, conts):
            y2 = res.completions[0]
            cand = self._rethought_sample(tasks[k], samples[k][plan.index], first[k][plan.index], plan, res, y2)
            candidates.append((k, plan, cand, y2))
            items.append(self._item(tasks[k], cand, rethought=True))
        verdicts = await self._score(items)
        by_task: dict[int, list[tuple[rethink.Decision, Sample]]] = {}
        for k, plan, cand, y2 in candidates:
            v = verdicts[cand.sample_id]
            self._apply_verdict(cand, v)
            d = rethink.judge_continuation(  # y2's length counts generated tokens, not the EOS token
                plan.index, len(self.engine.strip_eos(y2.token_ids)), y2.finish_reason == "stop", v.correct, v.n_wait, rcfg,
            )
            by_task.setdefault(k, []).append((d, cand))
            triggered[k] += 1
            self.stats.rethink.triggered += 1
            self.stats.rethink.y1_correct += int(plan.y1_correct)
            self.stats.rethink.y2_correct += int(v.correct)
        for k, pairs in by_task.items():
            decisions = rethink.limit_kept([d for d, _ in pairs], rcfg)
            for d, (_, cand) in zip(decisions, pairs):
                if d.kept:
                    samples[k][d.index] = cand  # the rethought response replaces its original
                    kept[k] += 1
                    self.stats.rethink.kept += 1
                else:
                    self.stats.rethink.dropped[d.reason] += 1
        return triggered, kept

    def _rethought_sample(
        self, task: PromptTask, orig: Sample, y1: Completion, plan: rethink.RethinkPlan, res: GenerationResult, y2: Completion
    ) -> Sample:
        n_trig = len(plan.trigger_token_ids)
        if res.prefix_logprobs is None or len(res.prefix_logprobs) != len(plan.prefix_token_ids):
            raise RuntimeError(f"engine returned no prefix log-probs for continuation {res.request_id}")
        tokens = np.concatenate([plan.prefix_token_ids, y2.token_ids]).astype(np.int32)
        logprobs = np.concatenate(
            [y1.logprobs[: plan.kept_tokens], res.prefix_logprobs[len(res.prefix_logprobs) - n_trig :], y2.logprobs]
        ).astype(np.float32)
        oldest, newest = min(y1.policy_version, y2.policy_version), max(y1.policy_version, y2.policy_version)
        s = Sample(
            sample_id=f"{orig.sample_id}:r",
            group_id=orig.group_id,
            task_id=task.task_id,
            prompt_id=task.prompt_id,
            prompt_token_ids=orig.prompt_token_ids,
            response_token_ids=tokens,
            sampler_logprobs=logprobs,
            response_text=self.engine.decode(tokens),
            finish_reason=y2.finish_reason,
            rethought=True,
            policy_version=oldest,
            category=task.category,
            source=task.source,
        )
        s.timings["y1_tokens"] = float(plan.kept_tokens)
        s.timings["trigger_tokens"] = float(n_trig)
        if newest != oldest:
            s.timings["policy_version_newest"] = float(newest)
        return s

    # ---- helpers
    def _sample(self, task: PromptTask, gid: str, sid: str, res: GenerationResult, c: Completion) -> Sample:
        return Sample(
            sample_id=sid,
            group_id=gid,
            task_id=task.task_id,
            prompt_id=task.prompt_id,
            prompt_token_ids=res.prompt_token_ids,
            response_token_ids=c.token_ids,
            sampler_logprobs=c.logprobs,
            response_text=c.text,
            finish_reason=c.finish_reason,
            policy_version=c.policy_version,
            category=task.category,
            source=task.source,
        )

    @staticmethod
    def _item(task: PromptTask, s: Sample, *, rethought: bool) -> VerifyItem:
        return VerifyItem(
            id=s.sample_id,
            response=s.response_text,
            gold=task.answer,
            question=task.question,
            eos=s.finish_reason == "stop",
            rethought=rethought,
        )

    @staticmethod
    def _apply_verdict(s: Sample, v: VerifyResult) -> None:
        s.reward = float(v.reward)
        s.correct = v.correct
        s.extracted = v.extracted
        s.verdict_reason = v.reason
        s.n_wait = v.n_wait


# --------------------------------------------------------------------------- loop


class Actor:
    """The claim -> build -> store -> ack loop of one rollout server."""

    def __init__(
        self,
        cfg: RethinkerConfig,
        engine: Engine,
        buffer: ActorBuffer,
        scorer: Scorer,
        *,
        server_id: str,
        gate: SwapGate | None = None,
        stats: ActorStats | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.buffer = buffer
        self.server_id = server_id
        self.gate = gate or SwapGate(cfg.rollout.partial_rollouts)
        self.stats = stats or ActorStats()
        self.builder = GroupBuilder(cfg, engine, scorer, server_id, self.stats)
        self.builder.should_stop = lambda: self._stop.is_set()
        self.builder.keepalive = self._keep_claims
        self._stop = asyncio.Event()
        self._held: dict[str, ClaimedTask] = {}  # entry_id -> a task not yet acked/released
        self._backoff = 0.0
        self._own_pending = hasattr(buffer, "reclaim_own")  # tasks a previous incarnation held
        self.on_lag: Callable[[int], Awaitable[None]] | None = None  # called with the learner version while paused for stale weights

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _lagging(self) -> tuple[int, str | None]:
        """``(learner version, reason)``: reason is set while the loaded weights lag the learner by
        more than the staleness bound."""
        pv = await self.buffer.policy_version()
        learner = pv.version if pv is not None else 0
        if learner - self.engine.loaded_version > staleness_bound(self.cfg):
            return learner, f"stale_weights(learner={learner}, loaded={self.engine.loaded_version})"
        return learner, None

    async def pause_reason(self) -> str | None:
        """Why the actor should not claim now (None: go)."""
        learner, reason = await self._lagging()
        if reason is not None:
            if self.on_lag is not None:  # outside any batch: a weight load it starts can swap at once
                await self.on_lag(learner)
            return reason
        # The buffer's own backpressure is the bounded prompt queue (buffer.max_inflight_tasks):
        # when the learner does not publish, claim_tasks simply returns nothing.
        return None

    async def run(self) -> None:
        """Loop until ``request_stop``; cancellation releases the tasks held."""
        poll = self.cfg.rollout.heartbeat_s
        try:
            seconds = self.stats.seconds
            while not self.stopping:
                t0 = time.perf_counter()
                await self.gate.wait_no_swap()
                t1 = time.perf_counter()
                seconds["swap_wait"] += t1 - t0
                try:
                    reason = await self.pause_reason()
                except Exception as exc:  # noqa: BLE001 - Redis blip: retry shortly
                    reason = f"buffer_unreachable({type(exc).__name__})"
                if reason != self.stats.paused:
                    log.info("actor_paused" if reason else "actor_resumed", server_id=self.server_id, reason=reason)
                self.stats.paused = reason
                if reason:
                    await self._sleep(poll)
                    seconds["paused"] += time.perf_counter() - t1
                    continue
                t2 = time.perf_counter()
                seconds["claim"] += t2 - t1  # the staleness check is part of getting the next tasks
                async with self.gate.batch():
                    t3 = time.perf_counter()
                    seconds["swap_wait"] += t3 - t2
                    if self.stopping:
                        break
                    try:
                        claimed = await self._reclaim_own() if self._own_pending else []
                        if not claimed:
                            claimed = await self.buffer.claim_tasks(
                                self.server_id, self.cfg.rollout.batch_prompts, self.cfg.rollout.claim_block_ms
                            )
                    except Exception as exc:  # noqa: BLE001
                        log.warning("claim_failed", server_id=self.server_id, error=f"{type(exc).__name__}: {exc}")
                        claimed = []
                        await self._sleep(poll)
                    seconds["claim"] += time.perf_counter() - t3
                    if claimed and await self._stale_after_claim(claimed):
                        continue
                    if claimed:
                        await self.process(claimed)
        except asyncio.CancelledError:
            await asyncio.shield(self.release_held())
            raise
        finally:
            self.stats.in_flight_tasks = 0

    async def _stale_after_claim(self, claimed: list[ClaimedTask]) -> bool:
        """A claim can wait (``rollout.claim_block_ms``) across a learner step: if the loaded weights
        now lag beyond the staleness bound, give the tasks back untouched and let the loop pause.
        Runs inside the batch's gate, so it only checks: a weight load started here would wait for
        this very batch to end."""
        try:
            _, reason = await self._lagging()
        except Exception:  # noqa: BLE001 - Redis blip: generate with what was checked before the claim
            return False
        if reason is None:
            return False
        for c in claimed:
            try:
                await self.buffer.release_task(c.entry_id)
                self.stats.tasks_released += 1
            except Exception as exc:  # noqa: BLE001 - reclaimed after the idle time
                log.warning("release_failed", entry_id=c.entry_id, error=f"{type(exc).__name__}: {exc}")
        log.info("claim_given_back", server_id=self.server_id, tasks=len(claimed), reason=reason)
        return True

    async def _keep_claims(self) -> None:
        """Reset the idle time of the tasks held, so other servers do not take them meanwhile."""
        if self._held and hasattr(self.buffer, "extend_claims"):
            await self.buffer.extend_claims(self.server_id, list(self._held))

    async def _reclaim_own(self) -> list[ClaimedTask]:
        """At start: the tasks still pending under this server's id (a previous incarnation died
        holding them) are taken back at once, before any new task; other servers would only take
        them after ``buffer.reclaim_idle_s``."""
        got = await self.buffer.reclaim_own(self.server_id, self.cfg.rollout.batch_prompts)
        if got:
            log.info("own_tasks_reclaimed", server_id=self.server_id, n=len(got), task_ids=[c.task.task_id for c in got])
        else:
            self._own_pending = False
        return got

    async def process(self, claimed: list[ClaimedTask]) -> None:
        """Build, store and ack one batch; on failure release what is not acked and back off."""
        for c in claimed:
            self._held[c.entry_id] = c
        self.stats.tasks_claimed += len(claimed)
        self.stats.in_flight_tasks = len(self._held)
        self.stats.batches += 1
        try:
            outcomes = await self.builder.build([c.task for c in claimed])
            t0 = time.perf_counter()
            for c, out in zip(claimed, outcomes):
                if out.group is None:
                    log.error("task_rejected", task_id=c.task.task_id, reason=out.error)
                    self.stats.tasks_rejected += 1
                    await self._ack(c)
                    continue
                res = await self.buffer.add_group(out.group)
                if getattr(res, "stored", True):
                    self.stats.groups_stored += 1
                else:
                    self.stats.groups_duplicate += 1
                await self._ack(c)
            self.stats.seconds["store"] += time.perf_counter() - t0
            self._backoff = 0.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the batch failed: give its tasks back
            self.stats.batch_errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("batch_failed", server_id=self.server_id, error=self.stats.last_error)
            await self._give_back_held()
            self._backoff = min(max(2 * self._backoff, 0.5), 30.0)
            await self._sleep(self._backoff)
        finally:
            self.stats.in_flight_tasks = len(self._held)

    async def _ack(self, c: ClaimedTask) -> None:
        await self.buffer.ack_task(c.entry_id)
        self._held.pop(c.entry_id, None)
        self.stats.tasks_acked += 1

    async def _give_back_held(self) -> None:
        """After a failed batch: release tasks; ack (reject) those that failed too often."""
        limit = self.cfg.rollout.max_task_deliveries
        for entry_id, c in list(self._held.items()):
            try:
                if getattr(c, "deliveries", 1) >= limit:
                    log.error("task_rejected", task_id=c.task.task_id, reason=f"failed {c.deliveries} deliveries")
                    self.stats.tasks_rejected += 1
                    await self._ack(c)
                else:
                    await self.buffer.release_task(entry_id)
                    self._held.pop(entry_id, None)
                    self.stats.tasks_released += 1
            except Exception as exc:  # noqa: BLE001 - it will be reclaimed after reclaim_idle_s
                log.warning("release_failed", entry_id=entry_id, error=f"{type(exc).__name__}: {exc}")
                self._held.pop(entry_id, None)

    async def release_held(self) -> int:
        """Return every held task to the queue (shutdown); returns how many."""
        n = 0
        for entry_id in list(self._held):
            try:
                await self.buffer.release_task(entry_id)
                n += 1
                self.stats.tasks_released += 1
            except Exception as exc:  # noqa: BLE001
                log.warning("release_failed", entry_id=entry_id, error=f"{type(exc).__name__}: {exc}")
            self._held.pop(entry_id, None)
        self.stats.in_flight_tasks = 0
        if n:
            log.info("tasks_released", server_id=self.server_id, n=n)
        return n
