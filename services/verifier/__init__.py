"""Rule-based answer verifier (spec section 5): more accurate than math-verify alone, bounded in time.

Library API (stable):
- ``grade(response, gold, *, question=None) -> Verdict``: in-process, fast paths before sympy;
- ``grade_many(items, *, timeout_s=1.0, workers=None) -> list[Verdict]``: worker processes with a
  hard per-item limit enforced from outside (a stuck item's worker is killed and replaced);
- ``reward(verdict, *, eos, n_wait, rethought, cfg)`` and ``count_waits(text)``.
The HTTP service is ``services.verifier.app`` (FastAPI) / ``serve_ray`` (Ray Serve); other parts
talk to it through ``services.verifier.client.VerifierClient``.
"""

from .grader import Verdict, grade
from .pool import GradePool, grade_many
from .rewards import count_waits, reward

__all__ = ["Verdict", "grade", "grade_many", "reward", "count_waits", "GradePool"]
