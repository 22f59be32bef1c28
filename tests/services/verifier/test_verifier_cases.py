"""The labelled case suite (cases.yaml): every verdict must match the careful-grader label.

Labels follow the grading rules of docs/verifier.md.  A case the grader still gets wrong is marked
``known_miss`` in the file and listed in ``KNOWN_MISSES`` here: the test asserts that exactly these
cases are missed, so a fix and a regression both fail it.  Ordinary and hostile cases run in-process
through ``grade`` (the fast paths must answer hostile input quickly on their own); a sample of
hostile cases also runs through the worker pool, where no case may time out.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from services.verifier import GradePool, grade, grade_many
from services.verifier.casefile import load_cases

CASES = load_cases(Path(__file__).with_name("cases.yaml"))
IN_PROCESS_LIMIT_S = 2.0  # generous for a shared 2-core machine; the pool enforces the real 1 s limit

KNOWN_MISSES: tuple[str, ...] = ("text-043", "text-045")


def test_suite_is_large_and_covers_every_kind() -> None:
    kinds = Counter(c.kind for c in CASES)
    assert len(CASES) >= 300
    for kind, minimum in {"extract": 40, "choice": 60, "number": 80, "math": 40, "text": 20, "hostile": 40}.items():
        assert kinds[kind] >= minimum, (kind, kinds[kind])
    labels = Counter(c.expected for c in CASES)
    assert labels[True] >= 100 and labels[False] >= 100  # both verdicts are exercised
    blind = [c for c in CASES if "blind" in c.tags]
    assert len(blind) >= 150 and sum(c.kind == "rethink" for c in blind) >= 40


def test_known_miss_list_is_exact() -> None:
    assert tuple(c.id for c in CASES if c.known_miss) == KNOWN_MISSES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case) -> None:
    t0 = time.perf_counter()
    v = grade(case.response, case.gold, question=case.question)
    elapsed = time.perf_counter() - t0
    if case.known_miss:
        assert v.correct is not case.expected, f"{case.id} is marked known_miss but is now graded right: unmark it"
        return
    assert v.correct is case.expected, (
        f"{case.id} ({case.note}): expected {case.expected}, got {v.correct} because {v.reason!r}; "
        f"extracted {str(v.extracted)[:80]!r}; gold {case.gold[:60]!r}; response {case.response[:120]!r}"
    )
    assert isinstance(v.reason, str) and v.reason
    if case.hostile:
        assert elapsed < IN_PROCESS_LIMIT_S, f"{case.id} took {elapsed:.2f} s in-process"


def test_hostile_cases_through_the_pool_answer_without_hanging() -> None:
    # The production 1 s limit is what benchmarks/verifier.py measures (worst_case_s, timeouts); here
    # the limit is 3 s so that a CI machine shared with other jobs does not flake, and a hang (which
    # never finishes) still fails.
    hostile = [c for c in CASES if c.hostile and not c.known_miss][::4]
    assert len(hostile) >= 10
    with GradePool(2) as pool:
        grade_many([("\\boxed{1}", "1")], pool=pool, timeout_s=60)  # workers ready
        t0 = time.perf_counter()
        verdicts = grade_many([(c.response, c.gold, c.question) for c in hostile], pool=pool, timeout_s=3.0)
        elapsed = time.perf_counter() - t0
    assert [v.timed_out for v in verdicts] == [False] * len(hostile)
    assert [v.correct for v in verdicts] == [c.expected for c in hostile]
    assert elapsed < 3.0 * len(hostile) / 2 + 2
