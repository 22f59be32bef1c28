"""Symbolic equivalence through math-verify (the field's library), guarded against costly input.

The gold is wrapped as ``\\boxed{gold}`` (as the public VL-Rethinker code does) and parsed once
(LRU cache); the extracted answer is wrapped the same way.  math-verify's own timeouts use
``signal.alarm``, which only works on a main thread, so they are switched off here: the hard time
limit is enforced from outside by ``pool.GradePool``.  Before anything reaches sympy,
``unsafe_reason`` refuses input that could make sympy compute for minutes or exhaust memory: long
strings, deep nesting, power towers, huge exponents and factorials.

``mathverify_baseline`` is the public code's whole check (math-verify on the full response), kept for
the benchmark's baseline.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .normalize import brace_depth

MAX_SYMBOLIC_CHARS = 600
MAX_NESTING = 24
MAX_POWER_NESTING = 3

for _name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

_BIG_EXP = re.compile(r"\^[ \t]{0,3}\{?[ \t(]{0,3}[+-]?[ \t]{0,3}\d{4,}")
_NUM_TOWER = re.compile(r"\d[ \t})]{0,3}(?:\^|\*\*)[ \t]{0,3}\{?[ \t(]{0,3}[\d.+-]{1,40}[ \t})]{0,3}(?:\^|\*\*)")
_BIG_FACT = re.compile(r"\d{4,}[ \t]{0,3}!|![ \t{}()]{0,3}!|[)}\]][ \t]{0,3}!|\\(?:binom|choose)[ \t]{0,3}\{[ \t]{0,3}\d{4,}|\\Gamma|\\operatorname\{?(?:gamma|factorial)")
_BIG_INT = re.compile(r"\d{60,}")


def _power_nesting(s: str) -> int:
    """How deeply exponents nest (``a^{b^{c}}`` is 3)."""
    stack: list[bool] = []
    exp_depth = best = 0
    pending_exp = False
    for m in re.finditer(r"\\.|\^|\*\*|[{}]", s):
        tok = m.group()
        if tok in ("^", "**"):
            best = max(best, exp_depth + 1)
            pending_exp = True
            continue
        if tok == "{":
            stack.append(pending_exp)
            if pending_exp:
                exp_depth += 1
        elif tok == "}":
            if stack and stack.pop():
                exp_depth -= 1
        pending_exp = False
    return best


def unsafe_reason(s: str) -> str | None:
    """Why handing ``s`` to sympy could hang or blow up, or None when it is safe enough."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return f"expression too long for symbolic checking ({len(s)} > {MAX_SYMBOLIC_CHARS} chars)"
    if brace_depth(s) > MAX_NESTING:
        return "expression nested too deeply"
    if _BIG_EXP.search(s) or _NUM_TOWER.search(s) or _power_nesting(s) >= MAX_POWER_NESTING:
        return "power too large to evaluate"
    if _BIG_FACT.search(s):
        return "factorial too large to evaluate"
    if len(_BIG_INT.findall(s)) > 1 and ("^" in s or "!" in s):
        return "integers too large to evaluate"
    return None


def _mv() -> Any:
    import math_verify  # imported lazily: ~1 s, only workers that need sympy pay it

    return math_verify


def _parse(latex: str) -> tuple[Any, ...]:
    mv = _mv()
    try:
        return tuple(
            mv.parse(
                latex,
                extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                parsing_timeout=None,  # type: ignore[arg-type]
            )
        )
    except Exception:  # noqa: BLE001 - any parser failure means "cannot read it"
        return ()


@lru_cache(maxsize=8192)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """math-verify's reading of ``\\boxed{gold}`` (cached: golds repeat n times per group)."""
    return _parse("\\boxed{" + gold + "}")


@lru_cache(maxsize=8192)
def parse_answer(answer: str) -> tuple[Any, ...]:
    return _parse("\\boxed{" + answer + "}")


def symbolic_equal(gold: str, answer: str) -> tuple[bool, str]:
    """(equal, reason) by math-verify's ``verify`` on the wrapped gold and answer."""
    why = unsafe_reason(answer) or unsafe_reason(gold)
    if why:
        return False, why
    g = parse_gold(gold)
    if not g:
        return False, "gold not parseable"
    a = parse_answer(answer)
    if not a:
        return False, "answer not parseable"
    try:
        ok = bool(_mv().verify(list(g), list(a), timeout_seconds=None))
    except Exception:  # noqa: BLE001
        return False, "symbolic comparison failed"
    return ok, "symbolic match" if ok else "symbolic mismatch"


def numeric_value(s: str, *, gold: bool = False) -> Fraction | None:
    """The real value of a closed-form number (``2\\sqrt{2}``, ``\\pi/2``) to 40 digits, else None."""
    if unsafe_reason(s):
        return None
    parsed = parse_gold(s) if gold else parse_answer(s)
    if not parsed:
        return None
    import sympy

    expr = parsed[0]
    try:
        if not isinstance(expr, sympy.Expr) or expr.free_symbols or not expr.is_number:
            return None
        v = expr.evalf(40)
        if not v.is_real or not v.is_finite:
            return None
        return Fraction(str(v))
    except Exception:  # noqa: BLE001
        return None


def mathverify_baseline(response: str, gold: str) -> bool:
    """The public code's check: math-verify on the whole response against ``\\boxed{gold}``."""
    mv = _mv()
    try:
        g = mv.parse("\\boxed{" + gold + "}", parsing_timeout=None)
        p = mv.parse(response, parsing_timeout=None)
        return bool(mv.verify(g, p, timeout_seconds=None))
    except Exception:  # noqa: BLE001
        return False
