"""Progress lines: the learner's metrics read incrementally, and a plain line at most every interval
when the output is not a terminal."""

from __future__ import annotations

import io
import json

from rethinker.progress import LearnerProgress, ProgressReporter, status_line


def test_metrics_are_read_incrementally_with_running_totals(tmp_path):
    path = tmp_path / "learner_metrics.jsonl"
    rows = [
        {"step": 1, "prefix": "train", "samples": 100, "replayed": 0, "idle_s": 1.0, "step_s": 2.0, "reward_mean": 0.25},
        {"step": 2, "prefix": "train", "samples": 100, "replayed": 50, "idle_s": 0.0, "step_s": 2.0, "reward_mean": 0.5},
        {"step": 2, "prefix": "eval", "accuracy": 0.625},
    ]
    progress = LearnerProgress(tmp_path)
    assert progress.poll()["replayed_share"] == 0.0  # no file yet
    text = "".join(json.dumps(r) + "\n" for r in rows)
    cut = len(json.dumps(rows[0])) + 10  # the second row is half written
    path.write_text(text[:cut])
    s = progress.poll()
    assert s["step"] == 1 and s["replayed_share"] == 0.0 and s["idle_share_run"] == 0.5
    with open(path, "a") as fh:
        fh.write(text[cut:])
    s = progress.poll()
    assert s["step"] == 2 and s["eval_accuracy"] == 0.625
    assert s["replayed_share"] == 0.25 and s["idle_share_run"] == 0.25
    assert progress.poll()["replayed_share"] == 0.25  # nothing new: the totals do not move
    line = status_line(s, {"sizes": {"fresh": 3, "replay": 7}})
    assert "step 2" in line and "eval 0.625" in line and "replayed 0.250" in line and "idle 0.25" in line
    assert "fresh 3 replay 7" in line


def test_plain_lines_at_most_every_interval_when_not_a_terminal():
    out = io.StringIO()
    with ProgressReporter(10, stream=out, interval_s=3600.0, tty=False) as p:
        p.tick({"step": 1}, {})
        p.tick({"step": 2}, {})  # within the interval: not printed
        p.note("phase message")  # phase messages always print
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("1/10 ") and lines[1] == "phase message"
    out = io.StringIO()
    with ProgressReporter(10, stream=out, interval_s=0.0, tty=False) as p:
        for step in range(3):
            p.tick({"step": step}, {})
    assert len(out.getvalue().splitlines()) == 3
