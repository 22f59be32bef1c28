"""The learner loop: feed prompts, wait for rollouts, sample an SSR batch, train, broadcast, checkpoint.

One iteration (= one optimizer step = one policy version)::

    feeder.top_up(step)                 publish prompts within the staleness bound (rank 0)
    wait_for_data()                     until this step's round of groups is stored (idle time); rounds
                                        stored ahead serve the next steps without a wait
    buffer.sample(n, mode=ssr|filter|grpo, policy_version=version)   (rank 0, broadcast to all ranks)
                                        a short batch is trained as drawn or completed after more
                                        rounds (learner.short_batch); batch_fill = drawn / wanted
    train_step(...)                     micro-batches, GRPO loss with off-policy correction, AdamW step
    version = step + offset             the weights after step s are version s (offset 0) unless a
                                        resume continued above versions published before
    every sync_every:       WeightSync.sync(version)  -> rollout servers, PolicyVersion published
    every checkpoint_every: CheckpointManager.save    -> resume point + HF export for late joiners
    every eval_every:       eval_fn(step) -> dict     (hook for the evaluation runner)
    metrics                             TensorBoard / W&B / JSONL / rich bar

On start the latest checkpoint (if any) is restored (step, version, optimizer, scheduler, data cursor,
RNG) and the current weights are broadcast at once, so rollout servers that kept running through a
learner restart continue with the restored weights.  Versions never go backwards: when a newer
version than the checkpoint's was published before the restart (kept in Redis), the restored weights
are published under the next unused number, and rollout servers holding that newer version resync.
SIGTERM/SIGINT finish the current step, save a checkpoint and return.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Sequence

import numpy as np
import torch

from common.config import ConfigError, RethinkerConfig
from common.data.schema import DataRow
from common.interfaces import LearnerBuffer
from common.logging import get_logger
from common.schemas import PromptTask, Sample
from common.staleness import staleness_bound
from learner.batching import PromptCache, TrainItem, build_items
from learner.checkpoint import CheckpointManager
from learner.feeder import PromptFeeder
from learner.policy_model import PolicyModel, samples_per_step
from learner.loss import LossConfig
from learner.metrics import MetricsSink
from learner.step import train_step
from learner.sync import WeightSync

log = get_logger("learner")

EvalFn = Callable[[int], dict]


@dataclass
class Batch:
    samples: list[Sample]
    tasks: dict[str, PromptTask]
    replayed: list[bool]


def _validate(cfg: RethinkerConfig) -> None:
    if cfg.algorithm.grpo.entropy_coef != 0.0:
        raise ConfigError("algorithm.grpo.entropy_coef: the learner implements the recipe's entropy bonus of 0 only")


class Trainer:
    def __init__(
        self,
        cfg: RethinkerConfig,
        *,
        buffer: LearnerBuffer | None = None,
        rows: Sequence[DataRow] | None = None,
        eval_fn: EvalFn | None = None,
        progress: bool = False,
        policy: PolicyModel | None = None,
        poll_s: float = 0.05,
    ) -> None:
        _validate(cfg)
        self.cfg = cfg
        self.policy = policy or PolicyModel(cfg)
        self.rank, self.world = self.policy.rank, self.policy.world
        self.n_samples = samples_per_step(cfg)
        self.loss_cfg = LossConfig.from_grpo(cfg.algorithm.grpo)
        self.eval_fn = eval_fn
        self.poll_s = poll_s
        from common.model_loading import load_processor

        self.processor = load_processor(
            self.policy.model_path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        self.cache = PromptCache(self.processor, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        self.ckpt = CheckpointManager(cfg, self.policy)
        self.step = 0
        self.version = 0
        self.version_offset = 0  # version - step; > 0 after a resume that continued above published versions
        self.buffer: LearnerBuffer | None = None
        self.feeder: PromptFeeder | None = None
        self._stop = False
        # Group accounting (wait_for_data): groups taken by finished rounds; the buffer's group count
        # when last looked at; where the current convergence window started (groups, effective samples).
        self._groups_taken: int | None = None
        self._groups_last = 0
        self._window_groups = 0
        self._eff_seen = 0
        self._empty_rounds = 0  # consecutive rounds of new groups without an effective response
        self.store_resets = 0  # times the buffer's store was found empty under a running learner
        self.converged = False
        self._totals_prev: dict[str, int] | None = None
        if self.rank == 0:
            if buffer is None:
                from services.buffer.client import BufferClient

                buffer = BufferClient(cfg)
            self.buffer = buffer
            if rows is None:
                rows = load_training_rows(cfg, self.processor)
            self.feeder = PromptFeeder(cfg, rows, publish=buffer.publish_tasks, can_publish=buffer.can_publish)
        self.sync = WeightSync(cfg, self.policy, buffer=self.buffer)
        self.metrics = MetricsSink(cfg, enabled=self.rank == 0, progress=progress and self.rank == 0)

    # ------------------------------------------------------------------ resume
    def resume(self) -> bool:
        """Restore the latest checkpoint (if any), then make sure the version numbers go on above
        every version published before (``_continue_versions``)."""
        state = self.ckpt.load()
        if state is not None:
            self.step = int(state["step"])
            self.version = int(state["version"])
            if self.feeder is not None and "feeder" in state:
                self.feeder.load_state_dict(state["feeder"])
        self._continue_versions()
        if state is not None:
            if self.rank == 0 and state.get("hf_dir"):
                self.sync.publish_checkpoint(state["hf_dir"], version=self.version, step=self.step)
            log.info("resumed", step=self.step, version=self.version, tag=state.get("tag"))
        return state is not None

    def _continue_versions(self) -> None:
        """A version number names one weight set, forever.  When a version above the restored one
        was published before (the learner died after syncing newer weights than its last
        checkpoint), the restored weights get the next unused number and later steps count on from
        there: version = step + offset from now on.  The highest published version is kept in Redis
        (``BufferClient.highest_policy_version``); rollout servers' loaded versions count too."""
        high = self._highest_published() if self.rank == 0 else None
        if self.world > 1:
            import torch.distributed as dist

            box = [high]
            dist.broadcast_object_list(box, src=0)
            high = box[0]
        if high is not None and high > self.version:
            log.warning("versions_continue_above_published", restored=self.version, highest_published=high,
                        now=high + 1, step=self.step)
            self.version = high + 1
        self.version_offset = self.version - self.step

    def _highest_published(self) -> int | None:
        found: list[int] = []
        try:
            h = self.buffer.highest_policy_version()
            if h is not None:
                found.append(int(h))
        except Exception as exc:  # noqa: BLE001 - a buffer without the record: use what else there is
            log.warning("highest_version_unavailable", error=f"{type(exc).__name__}: {exc}")
        try:
            found += [int(v) for v in self.sync.member_versions().values()]
        except Exception as exc:  # noqa: BLE001
            log.warning("member_versions_unavailable", error=f"{type(exc).__name__}: {exc}")
        return max(found) if found else None

    def client_state(self) -> dict[str, Any]:
        return {"feeder": self.feeder.state_dict() if self.feeder is not None else None}

    # ------------------------------------------------------------------ data
    def _drawable(self) -> int:
        s = self.buffer.sizes()
        mode = self.cfg.algorithm.ssr.mode
        return s.fresh + (s.replay if mode == "ssr" else 0) + (s.zero if mode == "grpo" else 0)

    def wait_for_data(self) -> float:
        """Rank 0: until a round of ``prompts_per_step`` groups is there for this step (and something
        is drawable); keeps feeding while it waits.  Returns the seconds spent waiting.

        Groups are counted by rounds: every step (and every round granted without a step) takes
        exactly ``prompts_per_step`` groups off the buffer's count of stored groups.  Groups the
        rollout servers stored ahead of the learner (they may run ``staleness_bound`` rounds ahead)
        therefore serve the next steps without a wait; they are not swallowed by the one step that
        happens to see them.  The learner never counts more than one feed window (``bound + 1``
        rounds) behind the buffer's count, so groups stored before a (re)start are credited for one
        window at most.

        Every ``prompts_per_step`` new groups without a single effective response (every group
        all-right or all-wrong) count towards ``learner.stop_after_empty_rounds``; when nothing at
        all is drawable (in mode ssr the replay pool counts) the feeder is granted another round
        instead of a step (the public code's fill loop spins forever here).

        The feed window moves with every step, so the new round's tasks are published first, before
        looking for data: rollouts that are ahead keep working instead of running dry until the
        learner next has to wait."""
        self.feeder.top_up(self.step, self.version)
        t0 = time.perf_counter()
        need = self.cfg.learner.prompts_per_step
        window = need * (staleness_bound(self.cfg) + 1)
        warned_at = t0
        last_stats = 0.0
        while not self._stop:
            now = time.perf_counter()
            if now - last_stats >= max(self.poll_s, 0.05):
                last_stats = now
                totals = self.buffer.stats()["totals"]
                total, eff = int(totals["groups"]), int(totals.get("eff_samples", 0))
                if self._groups_taken is None:  # first look since the learner (re)started
                    self._groups_taken = self._window_groups = max(0, total - window)
                elif total < self._groups_last:
                    self._store_lost(total, eff)
                self._groups_last = total
                self._groups_taken = max(self._groups_taken, total - window)
                if total - self._window_groups >= need:
                    self._round_done(total - self._window_groups, eff - self._eff_seen)
                    self._window_groups, self._eff_seen = total, eff
                ready = False
                while total - self._groups_taken >= need and not ready:  # rounds stored ahead count at once
                    self._groups_taken += need
                    ready = self._stop or self._drawable() > 0
                    if not ready:
                        self.feeder.grant_round()
                if ready:
                    break
                if now - t0 > self.cfg.learner.sample_timeout_s:
                    if self._drawable() > 0:
                        log.warning("sample_timeout_partial", new_groups=total - self._groups_taken, need=need)
                        self._groups_taken = total
                        break
                    if now - warned_at > self.cfg.learner.sample_timeout_s:
                        warned_at = now
                        log.warning("starved", waited_s=round(now - t0, 1), new_groups=total - self._groups_taken)
            self.feeder.top_up(self.step, self.version)
            time.sleep(self.poll_s)
        return time.perf_counter() - t0

    def _store_lost(self, total: int, eff: int) -> None:
        """The buffer's group counter went backwards: Redis came back with fewer stored groups than
        before (restarted without its data, or it lost its last writes).  Said clearly, then
        training carries on: the learner keeps its weights, step and version; the lost groups (and,
        without persistence, the replay pool and every queued or claimed prompt task) are gone, so
        the feeder is granted a full feed window of new prompts (lost prompts come round again in
        the next epoch)."""
        lost_groups = self._groups_last - total
        inflight = self.feeder.state.published - self.cfg.learner.prompts_per_step * (self.step + self.feeder.state.extra_rounds)
        log.error("buffer_store_lost", step=self.step, version=self.version, groups_lost=lost_groups,
                  groups_now=total, tasks_in_flight=max(0, inflight), action="carry_on",
                  detail="Redis came back with fewer stored groups than before (restarted without its data, or "
                         "lost its last writes): those groups are gone, and without persistence also the replay "
                         "pool and the queued/claimed prompt tasks; training continues on new prompts")
        self.store_resets += 1
        self.feeder.regrant_window(self.step)
        self._groups_taken = self._groups_last = self._window_groups = total
        self._eff_seen = eff
        self._totals_prev = None

    def _round_done(self, new_groups: int, new_effective: int) -> None:
        """Count a finished round of new groups for the convergence rule (may set the stop flag)."""
        if new_effective > 0:
            self._empty_rounds = 0
            return
        self._empty_rounds += 1
        log.info("round_without_effective_samples", new_groups=new_groups, step=self.step, consecutive=self._empty_rounds)
        limit = self.cfg.learner.stop_after_empty_rounds
        if limit and self._empty_rounds >= limit:
            log.info("converged", step=self.step, empty_rounds=self._empty_rounds)
            self.converged = True
            self._stop = True

    def _draw(self, n: int, attempt: int) -> Batch:
        sb = self.buffer.sample(
            n,
            mode=self.cfg.algorithm.ssr.mode,
            policy_version=self.version,
            seed=self.cfg.run.seed * 1_000_003 + self.step + 7_919 * attempt,
        )
        return Batch(list(sb.samples), dict(sb.tasks), list(sb.replayed))

    def next_batch(self) -> tuple[Batch, float]:
        """Every rank: the step's batch (sampled on rank 0 and broadcast) and rank 0's idle seconds.

        With ``learner.short_batch: wait`` a batch the buffer could not fill is kept and completed
        by further draws after further rounds of groups; with ``train`` it is trained as it is."""
        import torch.distributed as dist

        payload: list[Batch | None] = [None]
        idle = 0.0
        if self.rank == 0:
            idle = self.wait_for_data()
            t0 = time.perf_counter()
            batch = self._draw(self.n_samples, 0)
            attempt = 0
            while self.cfg.learner.short_batch == "wait" and len(batch.samples) < self.n_samples and not self._stop:
                attempt += 1
                log.info("short_batch_wait", drawn=len(batch.samples), wanted=self.n_samples, step=self.step)
                self.feeder.grant_round()  # no step yet: the feeder may publish the next round now
                idle += time.perf_counter() - t0 + self.wait_for_data()
                t0 = time.perf_counter()
                more = self._draw(self.n_samples - len(batch.samples), attempt)
                batch = Batch(batch.samples + more.samples, {**batch.tasks, **more.tasks}, batch.replayed + more.replayed)
            idle += time.perf_counter() - t0
            payload = [batch]
        if self.world > 1:
            dist.broadcast_object_list(payload, src=0)
        return payload[0], idle

    def items_for(self, batch: Batch) -> tuple[list[TrainItem], list[str]]:
        """The batch's rows as train items, as drawn: a short batch stays short (never padded by
        repeating rows, which would bypass the |A|^alpha priority and the reuse cap)."""
        items, errors = build_items(batch.samples, batch.tasks, self.cache, replayed=batch.replayed)
        return items[: self.n_samples], errors

    # ------------------------------------------------------------------ loop
    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
            log.info("stop_requested", signal=signum)
            self._stop = True

        try:
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            pass

    def _batch_stats(self, batch: Batch) -> dict[str, float]:
        if not batch.samples:
            return {}
        rewards = np.array([s.reward for s in batch.samples], dtype=np.float64)
        lag = np.array([self.version - s.policy_version for s in batch.samples], dtype=np.float64)
        adv = np.array([s.advantage for s in batch.samples], dtype=np.float64)
        out = {
            "reward_mean": float(rewards.mean()),
            "staleness_mean": float(lag.mean()),
            "staleness_max": float(lag.max()),
            "replay_share": float(np.mean(batch.replayed)) if batch.replayed else 0.0,
            "samples": float(len(batch.samples)),
            "replayed": float(sum(batch.replayed)),
            "batch_fill": len(batch.samples) / self.n_samples,
            "batch_effective_share": float(np.mean(adv != 0)),
        }
        if self.buffer is not None:
            try:
                totals = {k: int(v) for k, v in self.buffer.stats()["totals"].items()}
                prev = self._totals_prev or {}
                ds = totals.get("samples", 0) - prev.get("samples", 0)
                de = totals.get("eff_samples", 0) - prev.get("eff_samples", 0)
                if ds > 0:
                    out["effective_share"] = de / ds
                self._totals_prev = totals
            except Exception:  # noqa: BLE001 - stats are diagnostics only
                pass
        out.setdefault("effective_share", out["batch_effective_share"])
        return out

    def save_checkpoint(self) -> float:
        t0 = time.perf_counter()
        hf = self.ckpt.save(step=self.step, version=self.version, client_state=self.client_state())
        self.sync.publish_checkpoint(str(hf), version=self.version, step=self.step)
        return time.perf_counter() - t0

    def run(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train until ``learner.total_steps`` (or ``max_steps`` more steps); returns a summary: step,
        version, status (``finished``, ``stopped`` by a signal or ``converged``: early stop), resumed,
        converged and the last step's figures."""

        self._install_signals()
        resumed = self.resume()
        lc = self.cfg.learner
        stop_at = lc.total_steps if max_steps is None else min(lc.total_steps, self.step + max_steps)
        if self.rank == 0:
            self.feeder.top_up(self.step, self.version)
        first = self.sync.sync(self.version, self.step)
        log.info("learner_started", step=self.step, version=self.version, resumed=resumed, stop_at=stop_at,
                 world=self.world, samples_per_step=self.n_samples, first_sync_s=round(first.get("sync_s", 0.0), 4))
        last: dict[str, float] = {}
        while self.step < stop_at and not self._stop_all():
            t_step = time.perf_counter()
            batch, idle = self.next_batch()
            if self._stop_all():
                break
            items, errors = self.items_for(batch)
            if errors and self.rank == 0:
                log.warning("samples_skipped", count=len(errors), first=errors[0])
            if not items:
                continue
            batch_stats = self._batch_stats(batch) if self.rank == 0 else {}  # lags vs the version it was drawn for
            stats = train_step(self.policy, items, self.loss_cfg, version=self.version)
            tokens = stats["tokens"]
            self.step += 1
            self.version = self.step + self.version_offset
            values = dict(stats)
            values.update(batch_stats)
            values["tokens"] = tokens
            values["train_s"] = stats["seconds"]
            values["tokens_per_s"] = tokens / max(stats["seconds"], 1e-9)
            if self.step % lc.sync_every == 0 or self.step == stop_at:
                values.update(self.sync.sync(self.version, self.step))
            else:
                values["sync_s"] = 0.0
            if self.step % lc.checkpoint_every == 0 or self.step == stop_at or self._stop_all():
                values["checkpoint_s"] = self.save_checkpoint()
            if self.eval_fn is not None and lc.eval_every and self.step % lc.eval_every == 0 and self.rank == 0:
                try:
                    self.metrics.log(self.step, self.eval_fn(self.step), prefix="eval")
                except Exception as exc:  # noqa: BLE001 - a broken eval never stops training
                    log.warning("eval_failed", step=self.step, error=f"{type(exc).__name__}: {exc}")
            wall = time.perf_counter() - t_step
            values["idle_s"] = idle
            values["idle_share"] = idle / max(wall, 1e-9)
            values["step_s"] = wall
            self.metrics.log(self.step, values)
            last = values
            if self.rank == 0:
                log.info("step", step=self.step, **{k: round(v, 5) for k, v in values.items() if isinstance(v, float)})
        if self._stop_all() and self.step % lc.checkpoint_every and self.step > 0:
            self.save_checkpoint()
        status = "converged" if self.converged else "stopped" if self._stop else "finished"
        self.metrics.close()
        return {"step": self.step, "version": self.version, "status": status, "resumed": resumed,
                "converged": self.converged, "last": last}

    def _stop_all(self) -> bool:
        """The stop flag, agreed by every rank (any rank's signal stops all)."""
        if self.world == 1:
            return self._stop
        import torch.distributed as dist

        t = torch.tensor([1 if self._stop else 0], dtype=torch.int32)
        dist.all_reduce(t)
        self._stop = bool(t.item())
        return self._stop

    def close(self) -> None:
        self.sync.close()


def load_training_rows(cfg: RethinkerConfig, processor: Any = None) -> list[DataRow]:  # processor: transformers ProcessorMixin, untyped
    """The training split with the config's selection, minus prompts longer than max_prompt_tokens."""
    from common.data.loader import drop_long_prompts, load_split

    rows = load_split(cfg.data, "train")
    if processor is not None:
        rows, dropped = drop_long_prompts(rows, processor, cfg.data)
        if dropped:
            log.warning("long_prompts_dropped", count=len(dropped), first=dropped[:5])
    if not rows:
        raise ConfigError(f"data.train_path: no usable training rows in {cfg.data.train_path!r}")
    return rows


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, default=str)
