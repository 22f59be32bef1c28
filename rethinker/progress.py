"""Progress of a running system as a person sees it: the learner's running totals and a status line.

``LearnerProgress`` reads ``<run_dir>/learner_metrics.jsonl`` incrementally (only the bytes added
since the last poll) and keeps the figures a status line shows: the last train row (step, reward,
effective share, tokens/s), the last held-out accuracy, and the run's cumulative replayed share
(replayed / trained rows) and learner idle share (seconds waiting for data / step seconds).

``ProgressReporter`` shows them: in a terminal a live status line (rich), otherwise a plain line at
most every ``interval_s`` seconds (so a log or a CI job sees the run advance).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class LearnerProgress:
    """Running totals of one run's learner metrics, read incrementally."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "learner_metrics.jsonl"
        self._offset = 0
        self._tail = b""
        self.last_train: dict[str, Any] = {}
        self.eval_accuracy: float | None = None
        self.eval_step: int | None = None
        self.trained = 0.0
        self.replayed = 0.0
        self.idle_s = 0.0
        self.step_s = 0.0

    def _add(self, row: dict[str, Any]) -> None:
        if row.get("prefix") == "train":
            self.last_train = row
            self.trained += float(row.get("samples", 0.0) or 0.0)
            self.replayed += float(row.get("replayed", 0.0) or 0.0)
            if "idle_s" in row and "step_s" in row:
                self.idle_s += float(row["idle_s"])
                self.step_s += float(row["step_s"])
        elif row.get("prefix") == "eval" and "accuracy" in row:
            self.eval_accuracy = float(row["accuracy"])
            self.eval_step = int(row.get("step", 0))

    def poll(self) -> dict[str, Any]:
        """Read what was appended since the last call; returns ``status()``."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return self.status()
        self._offset += len(chunk)
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()  # an incomplete last line waits for the next poll
        for line in lines:
            try:
                self._add(json.loads(line))
            except ValueError:
                continue
        return self.status()

    def status(self) -> dict[str, Any]:
        out = dict(self.last_train)
        out["eval_accuracy"] = self.eval_accuracy
        out["replayed_share"] = self.replayed / self.trained if self.trained else 0.0
        out["idle_share_run"] = self.idle_s / self.step_s if self.step_s else None
        return out


def read_learner_status(run_dir: str | Path) -> dict[str, Any]:
    """The learner's last train row with the run's totals (see ``LearnerProgress.status``)."""
    return LearnerProgress(run_dir).poll()


def status_line(learner: dict[str, Any], stats: dict[str, Any]) -> str:
    def f(key: str, d: dict[str, Any], fmt: str = "{:.3f}") -> str:
        v = d.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    sizes = stats.get("sizes", {}) if isinstance(stats.get("sizes"), dict) else {}
    return (
        f"step {learner.get('step', '-')} | reward {f('reward_mean', learner)} | "
        f"eval {f('eval_accuracy', learner)} | eff {f('effective_share', learner)} | "
        f"replayed {f('replayed_share', learner)} | idle {f('idle_share_run', learner, '{:.2f}')} | "
        f"v{stats.get('policy_version', learner.get('version', '-'))} | "
        f"buffer fresh {sizes.get('fresh', '-')} replay {sizes.get('replay', '-')} | "
        f"tok/s {f('tokens_per_s', learner, '{:.0f}')}"
    )


class ProgressReporter:
    """A live line in a terminal, else a plain line every ``interval_s`` seconds on ``stream``."""

    def __init__(self, total_steps: int, *, stream: TextIO | None = None, interval_s: float = 30.0,
                 tty: bool | None = None) -> None:
        self.total = total_steps
        self.stream = stream if stream is not None else sys.stdout
        self.interval_s = interval_s
        self.tty = self.stream.isatty() if tty is None else tty
        self._live: Any = None
        self._last = float("-inf")
        self._t0 = time.monotonic()

    def __enter__(self) -> "ProgressReporter":
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def line(self, status: dict[str, Any], stats: dict[str, Any]) -> str:
        done = status.get("step", 0) or 0
        return f"{done}/{self.total} {time.monotonic() - self._t0:.0f}s | {status_line(status, stats)}"

    def tick(self, status: dict[str, Any], stats: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(self.line(status, stats))
            return
        self.note_every(self.line(status, stats))

    def note_every(self, text: str) -> None:
        """Print ``text`` as a plain line when ``interval_s`` passed since the last one (no terminal)."""
        now = time.monotonic()
        if not self.tty and now - self._last >= self.interval_s:
            self._last = now
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A phase message: printed at once (above the live line in a terminal)."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            self._last = time.monotonic()
            print(text, file=self.stream, flush=True)
