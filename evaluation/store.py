"""The per-item results file of one benchmark: an append-only jsonl that makes a run resumable.

Each finished item is one JSON line (written, flushed and fsync'ed per batch), so an interrupted
run loses at most the batch in flight.  On start ``load()`` reads the finished items; a torn last
line (the process died mid-write) is cut off, so the file never holds a corrupt record, and its
item is simply done again.  A bad line anywhere else is an error naming the line: the file was
edited by hand and guessing would be wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from common.errors import EvaluationError


class ResultsFileError(EvaluationError, ValueError):
    """A results file that cannot be resumed from; the message names the file and line."""


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by id (the last record of an id wins: a retried failure replaces its error
        record); repairs a torn last line."""
        if not self.path.exists():
            return {}
        done: dict[str, dict[str, Any]] = {}
        good_end = 0
        with self.path.open("rb") as fh:
            data = fh.read()
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            raw = data[pos:end]
            lineno += 1
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict) or "id" not in rec:
                        raise ValueError("not a record with an id")
                except ValueError as exc:
                    if nl < 0:  # torn tail: the last write did not finish
                        break
                    raise ResultsFileError(f"{self.path}:{lineno}: corrupt record ({exc}); fix or delete the file") from None
                if nl < 0:  # a complete record without its newline: keep it, add the newline
                    good_end = end
                    done[str(rec["id"])] = rec
                    break
                done[str(rec["id"])] = rec
            good_end = end
            pos = end
        if good_end < len(data) or (data and not data.endswith(b"\n")):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
                if good_end and data[good_end - 1 : good_end] != b"\n":
                    fh.seek(good_end)
                    fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        lines = [json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        return len(lines)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
