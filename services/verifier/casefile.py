"""Labelled grading cases (YAML/JSONL) for the verifier's test suite and benchmark.

A case is ``{id, kind, response, gold, expected, question?, note?, hostile?, tags?, known_miss?}``.  ``response``,
``gold`` and ``question`` are strings or *text specs* that build large hostile inputs without
storing them: ``{repeat: S, times: N}`` is ``S * N`` and ``{concat: [spec, ...]}`` joins specs.
``expected`` is the careful human grader's verdict under the grading rules of docs/verifier.md
(true = credit the response), never what the grader happens to do.  ``tags`` name subsets (``blind``:
written from the rules without running the grader; ``retraction``: a rethinking continuation that
retracts the first answer).  ``known_miss`` is the reason the grader still gets the case wrong; the
case keeps its label and counts as a miss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BUILT_CHARS = 5_000_000


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    kind: str
    response: str
    gold: str
    expected: bool
    question: str | None = None
    note: str = ""
    hostile: bool = False
    tags: tuple[str, ...] = ()
    known_miss: str | None = None


def build_text(spec: Any, *, where: str = "") -> str:
    """A string from a text spec (see the module docstring)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return str(spec)
    if isinstance(spec, dict) and set(spec) == {"repeat", "times"}:
        unit, times = build_text(spec["repeat"], where=where), int(spec["times"])
        if times < 0 or len(unit) * times > MAX_BUILT_CHARS:
            raise ValueError(f"{where}: repeat spec builds more than {MAX_BUILT_CHARS} characters")
        return unit * times
    if isinstance(spec, dict) and set(spec) == {"concat"} and isinstance(spec["concat"], list):
        out = "".join(build_text(p, where=where) for p in spec["concat"])
        if len(out) > MAX_BUILT_CHARS:
            raise ValueError(f"{where}: concat spec builds more than {MAX_BUILT_CHARS} characters")
        return out
    raise ValueError(f"{where}: bad text spec {spec!r:.80}")


def load_cases(path: str | Path) -> list[Case]:
    """Cases from a YAML list or a JSONL file; ids must be unique."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raw = yaml.safe_load(text) or []
    if not isinstance(raw, list):
        raise ValueError(f"{p}: expected a list of cases")
    out: list[Case] = []
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise ValueError(f"{p}: case {i} is not a mapping")
        kind = str(rec.get("kind", "misc"))
        counters[kind] = counters.get(kind, 0) + 1
        cid = str(rec.get("id") or f"{kind}-{counters[kind]:03d}")
        if cid in seen:
            raise ValueError(f"{p}: duplicate case id {cid}")
        seen.add(cid)
        if "expected" not in rec or not isinstance(rec["expected"], bool):
            raise ValueError(f"{p}: case {cid} needs expected: true/false")
        q = rec.get("question")
        tags = rec.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{p}: case {cid} tags must be a list of names")
        miss = rec.get("known_miss")
        if miss is not None and (not isinstance(miss, str) or not miss.strip()):
            raise ValueError(f"{p}: case {cid} known_miss must be a reason")
        out.append(
            Case(
                id=cid,
                kind=kind,
                response=build_text(rec["response"], where=cid),
                gold=build_text(rec["gold"], where=cid),
                expected=rec["expected"],
                question=None if q is None else build_text(q, where=cid),
                note=str(rec.get("note", "")),
                hostile=bool(rec.get("hostile", kind == "hostile")),
                tags=tuple(tags),
                known_miss=miss,
            )
        )
    return out
