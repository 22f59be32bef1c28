"""The resumable benchmark runner: decode, judge, store per item, aggregate.

For each benchmark the runner builds the spec's prompt for every item, decodes greedily in
batches through a ``Decoder`` (in-process engine or rollout servers; several batches in flight when
the decoder allows it), judges each response with the verifier (in a worker thread, overlapping the
next batch's decoding), and appends one JSON record per item to ``OUT/results/<bench>.jsonl``.

Resume: items whose id is already in the results file are neither decoded nor judged again; a
torn last line is repaired (evaluation.store).  ``OUT/run.json`` holds the settings that change
results (model, max_new_tokens, suffix, pixel limits, rethinking, judging rules); resuming with
different settings is refused (``RunMismatchError``) unless the caller asks to overwrite.

Forced rethinking (``force_rethink``): every first response that ended with EOS is continued from
``prompt + y1 + "\\n\\nWait"``; both y1 and y1 + trigger + y2 are judged, and the report gives the
accuracy before and after (``correct`` / ``correct_rethink`` per item).  A y1 without EOS is not
continued and keeps its verdict.

Items whose decoding or judging raises a data error get a record with ``error`` (counted wrong);
those records are retried on the next resume.  Transport failures (servers down) abort the run;
what finished is kept.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from common.config import PROMPT_SUFFIX
from common.errors import EvaluationError
from common.logging import get_logger

from evaluation.benchmarks.base import EvalItem
from evaluation.generation import Decoded, Decoder
from evaluation.judging import Judge, Judgement
from evaluation.prompts import build_prompt
from evaluation.report import overall, summarize, write_report
from evaluation.store import ResultStore

log = get_logger("evaluation")

FATAL_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


class RunMismatchError(EvaluationError, ValueError):
    """Resuming into an output folder written with other settings."""


@dataclass(slots=True)
class RunSettings:
    """What an evaluation run is; the fields in ``FINGERPRINT`` decide whether a run can resume."""

    model: str
    max_new_tokens: int = 2048
    batch_size: int = 8
    force_rethink: bool = False
    trigger: str = "\n\nWait"
    prompt_suffix: str = PROMPT_SUFFIX
    min_pixels: int | None = None
    max_pixels: int | None = None
    option_text_rule: bool = True
    precision_rule: bool = True
    max_items: int | None = None

    FINGERPRINT = (
        "model",
        "max_new_tokens",
        "force_rethink",
        "trigger",
        "prompt_suffix",
        "min_pixels",
        "max_pixels",
        "option_text_rule",
        "precision_rule",
    )

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in self.FINGERPRINT}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def results_name(bench: str) -> str:
    return bench.replace(":", "-").replace("/", "_") + ".jsonl"


class ProgressReporter:
    """Items done / total, items/s and running accuracy; a live bar on a terminal, lines otherwise."""

    def __init__(self, enabled: bool = True, *, stream: Any = None, every_s: float = 10.0) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._progress = None
        self._last_line = 0.0

    def start(self, bench: str, total: int, done: int, correct: int, correct_rethink: int | None) -> None:
        self.bench, self.total, self.done, self.correct, self.correct_r = bench, total, done, correct, correct_rethink
        self.t0, self.new = time.perf_counter(), 0
        self._printed = -1
        if not self.enabled:
            return
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} items/s"),
                TextColumn("acc {task.fields[acc]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(bench, total=total, completed=done, rate="-", acc=self._acc())
        else:
            self._line(force=True)

    def _acc(self) -> str:
        if not self.done:
            return "-"
        s = f"{100 * self.correct / self.done:.1f}%"
        if self.correct_r is not None:
            s += f" -> {100 * self.correct_r / self.done:.1f}%"
        return s

    @property
    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.new / dt if dt > 0 else 0.0

    def _line(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self._printed == self.done and not force:
            return
        if force or now - self._last_line >= self.every_s or self.done == self.total:
            self._last_line, self._printed = now, self.done
            print(
                f"[{self.bench}] {self.done}/{self.total} items, {self.rate:.2f} items/s, acc {self._acc()}",
                file=self.stream,
                flush=True,
            )

    def advance(self, n: int, correct: int, correct_rethink: int | None) -> None:
        self.done += n
        self.new += n
        self.correct += correct
        if self.correct_r is not None and correct_rethink is not None:
            self.correct_r += correct_rethink
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, advance=n, rate=f"{self.rate:.2f}", acc=self._acc())
        else:
            self._line()

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.enabled and self._printed != self.done:
            self._line(force=True)


@dataclass
class BenchmarkRun:
    """The outcome of one benchmark: its summary and the records it was computed from."""

    name: str
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    new_items: int = 0
    resumed_items: int = 0
    seconds: float = 0.0


class EvalRunner:
    """Runs benchmarks with one decoder and one judge; ``out_dir=None`` keeps everything in memory."""

    def __init__(
        self,
        decoder: Decoder,
        settings: RunSettings,
        *,
        judge: Judge | None = None,
        out_dir: str | Path | None = None,
        overwrite: bool = False,
        progress: bool | ProgressReporter = True,
    ) -> None:
        self.decoder = decoder
        self.settings = settings
        self.judge = judge or Judge(option_text=settings.option_text_rule, precision=settings.precision_rule)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.overwrite = overwrite
        self.progress = progress if isinstance(progress, ProgressReporter) else ProgressReporter(bool(progress))
        if self.out_dir is not None:
            self._check_run_file()

    # ------------------------------------------------------------------ run metadata

    def _check_run_file(self) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.out_dir / "run.json"
        mine = self.settings.fingerprint()
        if run_file.exists() and not self.overwrite:
            try:
                theirs = json.loads(run_file.read_text()).get("fingerprint", {})
            except (ValueError, AttributeError):
                raise RunMismatchError(f"{run_file} is not valid JSON; use --overwrite or another --out") from None
            diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
            if diff:
                shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise RunMismatchError(
                    f"{self.out_dir} holds a run with other settings ({shown}); "
                    "use another --out to keep it, or --overwrite to start over"
                )
        if self.overwrite:
            for f in [*(self.out_dir / "results").glob("*.jsonl"), self.out_dir / "summary.json", self.out_dir / "summary.md"]:
                f.unlink(missing_ok=True)
        tmp = run_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"fingerprint": mine, "settings": self.settings.to_dict()}, indent=2))
        tmp.replace(run_file)

    def store_for(self, bench: str) -> ResultStore | None:
        return None if self.out_dir is None else ResultStore(self.out_dir / "results" / results_name(bench))

    # ------------------------------------------------------------------ one batch

    def _record(
        self, item: EvalItem, prompt_text: str, d: Decoded | None, j1: Judgement | None, j2: Judgement | None, error: str | None
    ) -> dict[str, Any]:
        rec = item.to_record()
        rec["prompt"] = prompt_text
        rec["model"] = self.settings.model
        if error is not None:
            rec.update(response="", finish_reason="error", n_tokens=0, extracted=None, correct=False, error=error)
            if self.settings.force_rethink:
                rec["correct_rethink"] = False
                rec["rethink"] = {"triggered": False, "why": "error"}
            return rec
        assert d is not None and j1 is not None
        rec.update(
            response=d.first.text,
            finish_reason=d.first.finish_reason,
            n_tokens=d.first.n_tokens,
            extracted=j1.extracted,
            correct=j1.correct,
            judge_reason=j1.reason,
            judge_rule=j1.rule,
        )
        if self.settings.force_rethink:
            if d.rethink is None or j2 is None:
                rec["rethink"] = {"triggered": False, "why": "no_eos"}
                rec["correct_rethink"] = j1.correct
            else:
                rec["rethink"] = {
                    "triggered": True,
                    "trigger": self.settings.trigger,
                    "continuation": d.rethink.continuation,
                    "response": d.rethink.text,
                    "finish_reason": d.rethink.finish_reason,
                    "n_tokens": d.rethink.n_tokens,
                    "extracted": j2.extracted,
                    "judge_reason": j2.reason,
                    "judge_rule": j2.rule,
                }
                rec["correct_rethink"] = j2.correct
        return rec

    def _judge_decoded(
        self, items: Sequence[EvalItem], decoded: Sequence[Decoded], questions: Sequence[str]
    ) -> tuple[list[Judgement], list[Judgement | None]]:
        """Judge every y1 and every y1 + trigger + y2 of a batch in one verifier call."""
        pairs_items: list[EvalItem] = list(items)
        texts = [d.first.text for d in decoded]
        qs = list(questions)
        second_at = []
        for i, d in enumerate(decoded):
            if d.rethink is not None:
                second_at.append(i)
                pairs_items.append(items[i])
                texts.append(d.rethink.text)
                qs.append(questions[i])
        verdicts = self.judge.judge(pairs_items, texts, qs)
        firsts = verdicts[: len(items)]
        seconds: list[Judgement | None] = [None] * len(items)
        for k, i in enumerate(second_at):
            seconds[i] = verdicts[len(items) + k]
        return firsts, seconds

    async def _decode_and_judge(self, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        prompts = [build_prompt(it, self.settings.prompt_suffix) for it in items]
        trigger = self.settings.trigger if self.settings.force_rethink else None
        decoded = await self.decoder.decode(prompts, max_new_tokens=self.settings.max_new_tokens, rethink_trigger=trigger)
        if len(decoded) != len(items):
            raise RuntimeError(f"decoder returned {len(decoded)} results for {len(items)} prompts")
        j1, j2 = await asyncio.to_thread(self._judge_decoded, items, decoded, [p.question for p in prompts])
        return [self._record(it, p.text, d, a, b, None) for it, p, d, a, b in zip(items, prompts, decoded, j1, j2)]

    async def _batch(self, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        try:
            return await self._decode_and_judge(items)
        except FATAL_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad item must not sink the batch
            if _is_transport_error(exc):
                raise
            if len(items) > 1:
                out: list[dict[str, Any]] = []
                for it in items:
                    out += await self._batch([it])
                return out
            it = items[0]
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("eval_item_failed", benchmark=it.benchmark, id=it.id, error=msg)
            return [self._record(it, build_prompt(it, self.settings.prompt_suffix).text, None, None, None, msg)]

    # ------------------------------------------------------------------ a benchmark

    async def run_benchmark(self, name: str, items: Sequence[EvalItem]) -> BenchmarkRun:
        t0 = time.perf_counter()
        store = self.store_for(name)
        previous = store.load() if store is not None else {}
        wanted = {it.id for it in items}
        finished = {k: r for k, r in previous.items() if k in wanted and not r.get("error")}
        todo = [it for it in items if it.id not in finished]
        rethink = self.settings.force_rethink
        self.progress.start(
            name,
            total=len(items),
            done=len(finished),
            correct=sum(1 for r in finished.values() if r.get("correct")),
            correct_rethink=sum(1 for r in finished.values() if r.get("correct_rethink")) if rethink else None,
        )
        log.info("eval_benchmark_start", benchmark=name, items=len(items), resumed=len(finished), todo=len(todo))
        new_records: dict[str, dict[str, Any]] = {}
        bs = max(1, self.settings.batch_size)
        batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        sem = asyncio.Semaphore(max(1, int(getattr(self.decoder, "max_inflight", 1))))

        async def one(batch: Sequence[EvalItem]) -> None:
            async with sem:
                recs = await self._batch(batch)
            if store is not None:
                store.append(recs)
            for r in recs:
                new_records[r["id"]] = r
            self.progress.advance(
                len(recs),
                sum(1 for r in recs if r.get("correct")),
                sum(1 for r in recs if r.get("correct_rethink")) if rethink else None,
            )

        try:
            async with asyncio.TaskGroup() as tg:
                for b in batches:
                    tg.create_task(one(b))
        except BaseExceptionGroup as eg:  # surface the first real error, not the group
            raise eg.exceptions[0] from None
        finally:
            self.progress.finish()
        records = [finished.get(it.id) or new_records[it.id] for it in items]
        summary = summarize(records, rethink=rethink)
        dt = time.perf_counter() - t0
        log.info(
            "eval_benchmark_done",
            benchmark=name,
            items=len(items),
            accuracy=summary["accuracy"],
            accuracy_rethink=summary.get("accuracy_rethink"),
            new=len(todo),
            seconds=round(dt, 3),
        )
        return BenchmarkRun(name, summary, records, new_items=len(todo), resumed_items=len(finished), seconds=dt)

    async def run(self, benchmarks: Mapping[str, Sequence[EvalItem]]) -> dict[str, Any]:
        """Run every benchmark in order, then write ``summary.json`` / ``summary.md`` (with an out dir)."""
        runs: dict[str, BenchmarkRun] = {}
        for name, items in benchmarks.items():
            runs[name] = await self.run_benchmark(name, items)
        summaries = {k: r.summary for k, r in runs.items()}
        summary = {
            "model": self.settings.model,
            "settings": self.settings.to_dict(),
            "benchmarks": summaries,
            "overall": overall(summaries),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.out_dir is not None:
            summary_all = self._merge_with_previous(summary)
            write_report(self.out_dir, summary_all)
            return summary_all
        return summary

    def _merge_with_previous(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Keep the summaries of benchmarks run earlier into the same folder (same settings)."""
        assert self.out_dir is not None
        path = self.out_dir / "summary.json"
        if not path.exists() or self.overwrite:
            return summary
        try:
            old = json.loads(path.read_text())
        except ValueError:
            return summary
        merged = dict(old.get("benchmarks") or {})
        merged.update(summary["benchmarks"])
        out = dict(summary)
        out["benchmarks"] = merged
        out["overall"] = overall(merged)
        return out


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import httpx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (httpx.TransportError,))
