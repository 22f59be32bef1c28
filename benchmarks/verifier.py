"""Benchmark of the verifier: accuracy on our labelled suite, throughput vs math-verify, worst case.

Prints ONE JSON line.  Figures (all measured in this run):

- ``accuracy``: share of the labelled cases (tests/services/verifier/cases.yaml, ordinary and
  hostile) whose verdict matches the label, each graded through a 1-worker ``GradePool`` with the
  production limit (``--timeout-s``, default 1.0 s); a timeout and a known miss count as misses.
- ``accuracy_rethink`` / ``accuracy_retraction`` / ``accuracy_blind``: the same on the rethinking
  format (kind ``rethink`` or a response containing the "\n\nWait" trigger), on the cases tagged
  ``retraction`` and on the cases tagged ``blind``; ``misses``: the ids graded wrong.
- ``accuracy_ordinary`` / ``mathverify_accuracy_ordinary``: the same on the ordinary (non-hostile)
  cases, for us and for the public code's check (math-verify's ``parse`` on the whole response,
  gold wrapped as ``\\boxed{gold}``, ``verify``), both through a 1-worker pool with the same limit.
- ``items_per_s`` / ``mathverify_items_per_s``: ordinary cases graded as one batch by a 1-worker
  pool, ours vs math-verify, same cases, same run (pool start-up excluded; best of ``--repeats``
  fresh pools each, so parse caches only help within a pass).  ``speedup_vs_mathverify`` is the ratio.
- ``worst_case_s``: the longest wall time of one single-item call (send, grade or time out, kill and
  respawn, receive) over every case; ``timeouts``: cases that hit the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.verifier.casefile import load_cases  # noqa: E402
from services.verifier.pool import GradePool, Timeout, result_to_verdict  # noqa: E402

CASES = ROOT / "tests" / "services" / "verifier" / "cases.yaml"
BASELINE = "services.verifier.symbolic:mathverify_baseline"
BASELINE_WARMUP = "services.verifier.symbolic:mathverify_warmup"


def _throughput(items: list[tuple], *, baseline: bool, timeout_s: float, repeats: int) -> tuple[float, list]:
    best = 0.0
    outs: list = []
    for _ in range(repeats):
        kw = {"target": BASELINE, "warmup": BASELINE_WARMUP} if baseline else {}
        with GradePool(1, **kw) as pool:
            pool.map([items[0]], timeout_s=60.0)  # wait until the worker is ready
            t0 = time.perf_counter()
            outs = pool.map(items, timeout_s=timeout_s)
            dt = time.perf_counter() - t0
        best = max(best, len(items) / dt)
    return best, outs


def _subsets(case) -> list[str]:
    names = []
    if case.kind == "rethink" or "\n\nWait" in case.response[:100_000]:
        names.append("rethink")
    names += [t for t in ("retraction", "blind") if t in case.tags]
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=str(CASES))
    ap.add_argument("--timeout-s", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    cases = load_cases(args.cases)
    ordinary = [c for c in cases if not c.hostile]
    items = [(c.response, c.gold, c.question) for c in cases]

    # accuracy and worst case: every case alone through a 1-worker pool with the real limit
    right = 0
    right_ord = 0
    subsets: dict[str, list[int]] = {"rethink": [0, 0], "retraction": [0, 0], "blind": [0, 0]}
    misses: list[str] = []
    worst = (0.0, "")
    timeouts = 0
    with GradePool(1) as pool:
        pool.map([("\\boxed{1}", "1", None)], timeout_s=60.0)
        for c, it in zip(cases, items):
            t0 = time.perf_counter()
            out = pool.map([it], timeout_s=args.timeout_s)[0]
            dt = time.perf_counter() - t0
            v = result_to_verdict(out)
            timeouts += isinstance(out, Timeout)
            ok = v.correct == c.expected
            right += ok
            right_ord += ok and not c.hostile
            if not ok:
                misses.append(c.id)
            for name in _subsets(c):
                subsets[name][0] += ok
                subsets[name][1] += 1
            worst = max(worst, (dt, c.id))

    # throughput on the ordinary cases: ours vs math-verify, one worker each
    ord_items = [(c.response, c.gold, c.question) for c in ordinary]
    ours_ips, _ = _throughput(ord_items, baseline=False, timeout_s=args.timeout_s, repeats=args.repeats)
    mv_ips, mv_outs = _throughput(ord_items, baseline=True, timeout_s=args.timeout_s, repeats=args.repeats)
    mv_right = sum((out is True) == c.expected for c, out in zip(ordinary, mv_outs))
    mv_timeouts = sum(isinstance(out, Timeout) for out in mv_outs)

    print(
        json.dumps(
            {
                "bench": "verifier",
                "cases": len(cases),
                "hostile_cases": len(cases) - len(ordinary),
                "accuracy": round(right / len(cases), 4),
                "accuracy_ordinary": round(right_ord / len(ordinary), 4),
                **{f"accuracy_{k}": round(r / n, 4) if n else None for k, (r, n) in subsets.items()},
                **{f"{k}_cases": n for k, (_, n) in subsets.items()},
                "known_misses": sum(1 for c in cases if c.known_miss),
                "misses": misses,
                "mathverify_accuracy_ordinary": round(mv_right / len(ordinary), 4),
                "items_per_s": round(ours_ips, 1),
                "mathverify_items_per_s": round(mv_ips, 1),
                "speedup_vs_mathverify": round(ours_ips / mv_ips, 2),
                "worst_case_s": round(worst[0], 3),
                "worst_case_id": worst[1],
                "timeouts": timeouts,
                "mathverify_timeouts_ordinary": mv_timeouts,
                "timeout_s": args.timeout_s,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
