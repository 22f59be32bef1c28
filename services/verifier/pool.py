"""Grading worker processes with a hard per-item time limit enforced from outside.

Each worker is a process (``forkserver`` context by default, with the grader and math-verify
preloaded in the fork server, so a replacement is ready in tens of milliseconds) holding one end of
its own pipe.  The calling thread sends an item to an idle worker and waits on all busy pipes with
``multiprocessing.connection.wait`` until the earliest deadline; a worker whose item is past its
deadline is killed (SIGKILL), joined and replaced, and the item's result is a timeout.  No signal
handler is involved, so the pool works from any thread, from an asyncio server (through a thread),
and inside Ray actors.

Several threads may call ``map`` at once: each call checks out idle workers (at least one, at most
one per item) and returns them at the end.  Workers run under an address-space limit
(``memory_mb``), so a hostile item fails with MemoryError instead of exhausting the machine.
``close()`` (also at interpreter exit) stops every worker; no process outlives the pool.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Callable, Sequence

from common.errors import VerifierServiceError

if TYPE_CHECKING:
    from .grader import Verdict

DEFAULT_TARGET = "services.verifier.grader:grade_tuple"
DEFAULT_WARMUP = "services.verifier.grader:warmup"
PRELOAD = ["services.verifier._preload"]
STARTUP_TIMEOUT_S = 120.0
MAX_START_FAILURES = 5


class PoolClosed(VerifierServiceError, RuntimeError):
    """The pool was closed."""


class WorkerStartError(VerifierServiceError, RuntimeError):
    """Grading workers die before becoming ready (e.g. an import error); the message says why."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """The result of an item that ran past its time limit (its worker was killed)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Crash:
    """The result of an item whose worker died while working on it."""

    exitcode: int | None


def _resolve(path: str) -> Callable[..., Any]:
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def _worker_main(conn: Connection, target: str, warmup: str | None, memory_mb: int | None) -> None:
    """Worker process: warm up, say ready, then answer ``(seq, args)`` messages until ``None``/EOF."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if memory_mb:
        try:
            import resource

            limit = int(memory_mb) * 1024 * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        except (ImportError, ValueError, OSError):
            pass
    try:
        fn = _resolve(target)
        if warmup:
            _resolve(warmup)()
        conn.send(("ready", os.getpid()))
    except BaseException as exc:  # noqa: BLE001 - report and exit
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        finally:
            return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        seq, args = msg
        try:
            out = fn(*args)
        except MemoryError:
            out = ("error", "MemoryError")
        except Exception as exc:  # noqa: BLE001
            out = ("error", f"{type(exc).__name__}: {exc}"[:500])
        try:
            conn.send((seq, out))
        except (OSError, ValueError):
            return
        except Exception as exc:  # noqa: BLE001 - an unpicklable result
            conn.send((seq, ("error", f"unsendable result: {type(exc).__name__}")))


@dataclass(eq=False)
class _Worker:
    proc: Any
    conn: Connection
    ready: bool = False
    pid: int | None = None
    started: float = field(default_factory=time.monotonic)


class GradePool:
    """A fixed number of worker processes running ``target(*args)`` with a hard per-item limit."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        memory_mb: int | None = 2048,
        start_method: str = "forkserver",
        target: str = DEFAULT_TARGET,
        warmup: str | None = DEFAULT_WARMUP,
    ) -> None:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        if start_method not in mp.get_all_start_methods():
            start_method = "spawn"
        self.size = n
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(PRELOAD)
        self._target = target
        self._warmup = warmup
        self._memory_mb = memory_mb
        self._cv = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False
        self._start_failures = 0
        self._last_failure = ""
        self.timeouts = 0  # items killed for running past their limit (since start)
        self.crashes = 0
        self.replaced = 0
        with self._cv:
            for _ in range(n):
                self._idle.append(self._spawn())
        self._finalizer = weakref.finalize(self, GradePool._shutdown, self._all, self._cv)

    # ----------------------------------------------------------------- processes

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self._target, self._warmup, self._memory_mb),
            name="verifier-grader",
            daemon=True,
        )
        proc.start()
        child.close()
        w = _Worker(proc, parent, pid=proc.pid)
        self._all.add(w)
        return w

    def _kill(self, w: _Worker) -> None:
        try:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            w.conn.close()
        except OSError:
            pass
        try:
            w.proc.close()
        except (ValueError, AttributeError):
            pass
        with self._cv:
            self._all.discard(w)

    def _replace(self, w: _Worker) -> _Worker:
        self._kill(w)
        self.replaced += 1
        if self._closed:
            raise PoolClosed("verifier pool closed")
        with self._cv:
            return self._spawn()

    @staticmethod
    def _shutdown(all_workers: set[_Worker], cv: threading.Condition) -> None:
        with cv:
            workers = list(all_workers)
            all_workers.clear()
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for w in workers:
            try:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(2)
            except (OSError, ValueError, AssertionError):
                pass
            try:
                w.conn.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop every worker (idle ones now; busy ones are killed when their call returns)."""
        with self._cv:
            self._closed = True
            self._idle.clear()
            self._cv.notify_all()
        self._finalizer()

    def __enter__(self) -> "GradePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        with self._cv:
            return [w.pid for w in self._all if w.pid is not None]

    def alive(self) -> int:
        with self._cv:
            return sum(1 for w in self._all if w.proc.is_alive())

    # ----------------------------------------------------------------- checkout

    def _checkout(self, want: int) -> list[_Worker]:
        with self._cv:
            while not self._idle and not self._closed:
                self._cv.wait(1.0)
            if self._closed:
                raise PoolClosed("verifier pool closed")
            take = max(1, min(want, len(self._idle)))
            got, self._idle = self._idle[:take], self._idle[take:]
            return got

    def _checkin(self, workers: list[_Worker]) -> None:
        with self._cv:
            if self._closed:
                leftovers = workers
            else:
                self._idle.extend(workers)
                leftovers = []
            self._cv.notify_all()
        for w in leftovers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
            self._kill(w)

    # ----------------------------------------------------------------- work

    def map(self, items: Sequence[tuple[Any, ...]], timeout_s: float) -> list[Any]:
        """``target(*item)`` for each item, in order; ``Timeout``/``Crash`` for items that did not finish."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        n = len(items)
        results: list[Any] = [None] * n
        if n == 0:
            return results
        pending = deque(range(n))
        workers = self._checkout(n)
        busy: dict[int, tuple[int, float]] = {}  # id(worker) -> (item index, deadline)
        by_conn: dict[Connection, _Worker] = {}
        try:
            while pending or busy:
                now = time.monotonic()
                for w in workers:
                    if pending and w.ready and id(w) not in busy:
                        idx = pending.popleft()
                        try:
                            w.conn.send((idx, tuple(items[idx])))
                        except (OSError, ValueError):
                            pending.appendleft(idx)
                            workers[workers.index(w)] = self._replace(w)
                            continue
                        busy[id(w)] = (idx, time.monotonic() + timeout_s)
                by_conn = {w.conn: w for w in workers if id(w) in busy or not w.ready}
                if not by_conn:
                    continue
                deadlines = [d for _, d in busy.values()]
                if deadlines:
                    wait_s = max(0.0, min(deadlines) - time.monotonic())
                else:
                    oldest = min(w.started for w in workers if not w.ready)
                    wait_s = max(0.0, oldest + STARTUP_TIMEOUT_S - time.monotonic())
                ready = wait(list(by_conn), timeout=wait_s)
                for conn in ready:
                    w = by_conn[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is None:  # the worker died
                        self._on_death(w, busy, results, workers)
                        continue
                    if msg[0] == "ready":
                        w.ready = True
                        self._start_failures = 0
                        continue
                    if msg[0] == "failed":
                        self._last_failure = str(msg[1])
                        self._on_death(w, busy, results, workers)
                        continue
                    seq, out = msg
                    entry = busy.pop(id(w), None)
                    if entry is not None and entry[0] == seq:
                        results[seq] = out
                now = time.monotonic()
                for w in list(workers):
                    entry = busy.get(id(w))
                    if entry is not None and now >= entry[1]:
                        busy.pop(id(w))
                        results[entry[0]] = Timeout(timeout_s)
                        self.timeouts += 1
                        workers[workers.index(w)] = self._replace(w)
                    elif not w.ready and now - w.started > STARTUP_TIMEOUT_S:
                        self._last_failure = f"worker not ready after {STARTUP_TIMEOUT_S:.0f} s"
                        self._on_death(w, busy, results, workers)
        finally:
            self._checkin(workers)
        return results

    def _on_death(self, w: _Worker, busy: dict[int, tuple[int, float]], results: list[Any], workers: list[_Worker]) -> None:
        entry = busy.pop(id(w), None)
        exitcode = None
        try:
            w.proc.join(1)
            exitcode = w.proc.exitcode
        except (OSError, ValueError, AssertionError):
            pass
        if entry is not None:
            results[entry[0]] = Crash(exitcode)
            self.crashes += 1
        elif not w.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._kill(w)
                workers.remove(w)
                if not workers:
                    raise WorkerStartError(f"grading workers fail to start: {self._last_failure or f'exit code {exitcode}'}")
                return
        workers[workers.index(w)] = self._replace(w)


# --------------------------------------------------------------------------- library entry point

_DEFAULT_POOLS: dict[int, GradePool] = {}
_DEFAULT_LOCK = threading.Lock()


def default_pool(workers: int | None = None) -> GradePool:
    """A process-wide pool per worker count, created on first use and closed at exit."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    with _DEFAULT_LOCK:
        pool = _DEFAULT_POOLS.get(n)
        if pool is None or pool.closed:
            pool = GradePool(n)
            _DEFAULT_POOLS[n] = pool
        return pool


def close_default_pools() -> None:
    with _DEFAULT_LOCK:
        pools = list(_DEFAULT_POOLS.values())
        _DEFAULT_POOLS.clear()
    for p in pools:
        p.close()


def result_to_verdict(out: Any) -> "Verdict":
    """A pool result (grade tuple, ``Timeout``, ``Crash`` or error) as a ``Verdict``."""
    from .grader import Verdict

    if isinstance(out, Timeout):
        return Verdict(False, None, f"timeout (> {out.seconds:g} s)", "", True)
    if isinstance(out, Crash):
        return Verdict(False, None, f"grading worker died (exit code {out.exitcode})")
    if isinstance(out, tuple) and len(out) == 4:
        correct, extracted, reason, kind = out
        return Verdict(bool(correct), extracted, str(reason), str(kind))
    if isinstance(out, tuple) and len(out) == 2 and out[0] == "error":
        return Verdict(False, None, f"grading error: {out[1]}")
    return Verdict(False, None, "grading error: bad worker result")


def grade_many(
    items: Sequence[Sequence[Any]],
    *,
    timeout_s: float = 1.0,
    workers: int | None = None,
    pool: GradePool | None = None,
) -> "list[Verdict]":
    """Grade ``(response, gold)`` (or ``(response, gold, question)``) items in parallel worker processes.

    Each item runs under a hard ``timeout_s`` limit enforced from outside its worker: a stuck item's
    worker is killed and replaced, and its verdict is ``timed_out=True`` (wrong).  Uses ``pool`` if
    given, else a shared pool of ``workers`` processes (default: CPU count).
    """
    norm: list[tuple[Any, ...]] = []
    for i, it in enumerate(items):
        if isinstance(it, (str, bytes)) or len(it) not in (2, 3):
            raise ValueError(f"item {i}: expected (response, gold) or (response, gold, question)")
        norm.append((it[0], it[1], it[2] if len(it) == 3 else None))
    p = pool or default_pool(workers)
    return [result_to_verdict(out) for out in p.map(norm, timeout_s)]
