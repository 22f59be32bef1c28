"""The worker pool: hard per-item limits enforced from outside, replacement, threads, no leaks."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from services.verifier import GradePool, grade_many
from services.verifier.pool import Crash, Timeout

# A real grading item that makes sympy work for seconds (a non-assignment equation: math-verify solves it).
SLOW = ("\\boxed{x^2 + y = (x+1)^{300}}", "x^2 + y = (x+2)^{300}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stuck_item_is_killed_its_worker_replaced_and_the_pool_still_answers() -> None:
    with GradePool(1, target="time:sleep", warmup=None) as pool:
        assert pool.map([(0.0,)], timeout_s=60) == [None]
        (old,) = pool.pids()
        t0 = time.perf_counter()
        out = pool.map([(30.0,), (0.0,)], timeout_s=0.5)
        elapsed = time.perf_counter() - t0
        assert isinstance(out[0], Timeout) and out[1] is None
        assert elapsed < 3.0
        assert _gone(old), "the killed worker must not survive"
        (new,) = pool.pids()
        assert new != old and psutil.pid_exists(new)
        assert pool.map([(0.0,)], timeout_s=5) == [None]
        assert pool.timeouts == 1 and pool.replaced == 1


def test_real_slow_grading_item_times_out_while_the_rest_of_the_batch_is_graded() -> None:
    with GradePool(2) as pool:
        grade_many([("\\boxed{1}", "1")] * 2, pool=pool, timeout_s=60)
        before = set(pool.pids())
        t0 = time.perf_counter()
        vs = grade_many([SLOW, ("\\boxed{5}", "5"), ("\\boxed{C}", "D"), ("\\boxed{\\frac{1}{2}}", "0.5")], pool=pool, timeout_s=0.3)
        elapsed = time.perf_counter() - t0
        assert vs[0].timed_out and not vs[0].correct and vs[0].reason.startswith("timeout")
        assert [v.correct for v in vs[1:]] == [True, False, True]
        assert not any(v.timed_out for v in vs[1:])
        assert elapsed < 2.5
        after = set(pool.pids())
        assert len(after) == 2 and len(before - after) == 1
        assert all(_gone(p) for p in before - after)
        assert grade_many([("\\boxed{7}", "7")], pool=pool)[0].correct


def test_crashing_worker_gives_a_wrong_verdict_and_is_replaced() -> None:
    with GradePool(1, target="os:_exit", warmup=None) as pool:
        out = pool.map([(3,)], timeout_s=5)
        assert isinstance(out[0], Crash) and out[0].exitcode == 3
        assert pool.crashes == 1 and pool.alive() == 1


def test_memory_limit_turns_a_huge_allocation_into_an_error() -> None:
    with GradePool(1, target="builtins:bytearray", warmup=None, memory_mb=512) as pool:
        out = pool.map([(4 * 1024**3,), (16,)], timeout_s=10)
        assert out[0] == ("error", "MemoryError")
        assert out[1] == bytearray(16)


def test_many_threads_share_a_pool() -> None:
    items = [(f"\\boxed{{{i}}}", str(i)) for i in range(40)] + [(f"\\boxed{{{i}}}", str(i + 1)) for i in range(40)]
    expected = [True] * 40 + [False] * 40
    results: dict[int, list[bool]] = {}
    with GradePool(2) as pool:

        def run(k: int) -> None:
            results[k] = [v.correct for v in grade_many(items, pool=pool, timeout_s=5)]

        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r == expected for r in results.values())


def test_close_stops_every_worker() -> None:
    pool = GradePool(2)
    grade_many([("\\boxed{1}", "1")], pool=pool, timeout_s=60)
    pids = pool.pids()
    assert len(pids) == 2
    pool.close()
    deadline = time.time() + 5
    while time.time() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)
    with pytest.raises(RuntimeError):
        grade_many([("\\boxed{1}", "1")], pool=pool)


def test_grade_many_default_pool_and_bad_items() -> None:
    vs = grade_many([("\\boxed{C}", "C"), ("The answer is (B).", "C", "A. 1\nB. 2\nC. 3")], workers=1)
    assert [v.correct for v in vs] == [True, False]
    with pytest.raises(ValueError):
        grade_many(["just a string"], workers=1)
    with pytest.raises(ValueError):
        grade_many([("a", "b")], workers=1, timeout_s=0)
