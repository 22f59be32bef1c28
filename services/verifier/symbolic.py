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

from .arith import same_value
from .fastlatex import fast_container, fast_parse
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
_PROSE = re.compile(r"(?<![A-Za-z\\])[A-Za-z]{3,}[ \t]{1,3}[A-Za-z]{3,}(?![A-Za-z])")  # two words: a sentence
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")


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


def _read(latex: str) -> tuple[Any, ...]:
    """(sympy object, text): the fast reader for simple expressions, else math-verify on ``\\boxed{..}``."""
    expr = fast_parse(latex)
    if expr is None:
        expr = fast_container(latex)
    if expr is not None:
        return (expr, latex)
    return _parse("\\boxed{" + latex + "}")


@lru_cache(maxsize=8192)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """The gold's reading (cached: golds repeat n times per group)."""
    return _read(gold)


@lru_cache(maxsize=8192)
def parse_answer(answer: str) -> tuple[Any, ...]:
    return _read(answer)


def symbolic_equal(gold: str, answer: str) -> tuple[bool, str]:
    """(equal, reason) by math-verify's ``verify`` on the wrapped gold and answer."""
    why = unsafe_reason(answer) or unsafe_reason(gold)
    if why:
        if why.startswith(("expression too long", "expression nested")):
            same = same_value(gold, answer)  # long or deep but simple: exact iterative evaluation
            if same is not None:
                return same, "exact evaluation match" if same else "exact evaluation mismatch"
        return False, why
    if _PROSE.search(_LATEX_CMD.sub(" ", answer)) and not _PROSE.search(_LATEX_CMD.sub(" ", gold)):
        return False, "answer is prose, not an expression"
    g = parse_gold(gold)
    if not g:
        return False, "gold not parseable"
    a = parse_answer(answer)
    if not a:
        return False, "answer not parseable"
    fast = fast_compare(g[0], a[0])
    if fast is not None:
        return fast, "symbolic match (numeric identity)" if fast else "symbolic mismatch (numeric identity)"
    try:
        ok = bool(_mv().verify(list(g), list(a), allow_set_relation_comp=True, timeout_seconds=None))
    except Exception:  # noqa: BLE001
        return False, "symbolic comparison failed"
    if not ok and _symbol_vs_expr_equal(g[0], a[0]):
        return True, "symbolic match (difference simplifies to 0)"
    return ok, "symbolic match" if ok else "symbolic mismatch"


# Points for the numeric identity test: two with positive values, one with negative values (branches).
_POINTS = (
    (0.7182818284590452, 1.3247179572447460, 0.5772156649015329, 1.6180339887498949, 0.9159655941772190),
    (1.2020569031595943, 0.8346268416740731, 1.4142135623730951, 0.6931471805599453, 1.7320508075688772),
    (-0.6180339887498949, -1.1447298858494002, -0.7390851332151607, -1.3063778838630806, -0.5671432904097838),
)
_SAME = 1e-25
_DIFFERENT = 1e-9
_FANCY = ("Abs", "floor", "ceiling", "Piecewise", "sign", "Mod", "frac", "factorial", "Max", "Min", "re", "im", "arg", "Integral", "Derivative", "Sum", "Product", "Limit")


def _value_at(expr: Any, point: dict[Any, float]) -> complex | None:
    import sympy

    v = expr.evalf(40, subs=point) if point else expr.evalf(40)
    if not isinstance(v, sympy.Expr) or v.free_symbols or not v.is_number:
        return None
    try:
        c = complex(v)
    except (TypeError, ValueError, OverflowError):
        return None
    if c != c or abs(c) == float("inf"):
        return None
    return c


def _close(x: complex, y: complex) -> tuple[bool, bool]:
    """(same, clearly different) at double precision relative to the values' size."""
    scale = max(1.0, abs(x), abs(y))
    d = abs(x - y) / scale
    return d <= _SAME or d == 0.0, d > _DIFFERENT


def _numeric_identity(g: Any, a: Any) -> bool | None:
    """Equal / not equal by evaluating both at fixed points; None when it cannot tell."""
    names = {type(n).__name__ for n in g.atoms(__import__("sympy").Function)} | {
        type(n).__name__ for n in a.atoms(__import__("sympy").Function)
    }
    if any(f in names for f in _FANCY):
        return None
    syms = sorted(g.free_symbols | a.free_symbols, key=lambda s: s.name)
    if len(syms) > len(_POINTS[0]):
        return None
    if not syms:
        x, y = _value_at(g, {}), _value_at(a, {})
        if x is None or y is None:
            return None
        same, different = _close(x, y)
        return True if same else (False if different else None)
    if g.free_symbols != a.free_symbols:
        # a variable the other side lacks: equal only if it cancels; let math-verify decide then
        pass
    agree = 0
    for k, values in enumerate(_POINTS):
        point = dict(zip(syms, values))
        x, y = _value_at(g, point), _value_at(a, point)
        if x is None or y is None:
            return None
        same, different = _close(x, y)
        if different and k < 2:
            return False
        agree += same
    return True if agree == len(_POINTS) else None


def fast_compare(g: Any, a: Any) -> bool | None:
    """Decide plain expressions, number tuples/sets/intervals and matrices without ``simplify``.

    A plain expression pair is equal when it agrees at three fixed points (two positive, one
    negative) to 1e-25, and unequal when it differs at a positive point by more than 1e-9 (relative);
    functions whose identities fail numerically (Abs, floor, Piecewise, ...) and anything undecided
    go to math-verify.  Containers are compared element by element when both sides have the same type.
    """
    import sympy

    try:
        gi, ai = _as_interval(g), _as_interval(a)
        if (gi is not None or ai is not None) and (isinstance(g, sympy.Interval) or isinstance(a, sympy.Interval)):
            if gi is None or ai is None:
                return None
            g, a = gi, ai  # an inequality in one variable against an interval: compare the sets
        if isinstance(g, sympy.Equality) and isinstance(a, sympy.Equality):
            # two assignments to the same variable (y = f(x) vs y = g(x)): compare the right sides
            if isinstance(g.lhs, sympy.Symbol) and g.lhs == a.lhs and g.lhs not in (g.rhs.free_symbols | a.rhs.free_symbols):
                return fast_compare(g.rhs, a.rhs)
            return None
        if isinstance(g, sympy.MatrixBase) or isinstance(a, sympy.MatrixBase):
            if not (isinstance(g, sympy.MatrixBase) and isinstance(a, sympy.MatrixBase)):
                return None
            if g.shape != a.shape:
                return False
            return _all_equal(list(g), list(a))
        if isinstance(g, sympy.Tuple) and isinstance(a, sympy.Tuple):
            if len(g) != len(a):
                return False
            return _all_equal(list(g), list(a))
        if isinstance(g, sympy.Interval) and isinstance(a, sympy.Interval):
            if (g.left_open, g.right_open) != (a.left_open, a.right_open):
                return False if _numbers(g.args[:2] + a.args[:2]) else None
            same = [x == y for x, y in ((g.start, a.start), (g.end, a.end))]  # covers the infinite ends
            if all(same):
                return True
            return _all_equal([x for x, ok in zip((g.start, g.end), same) if not ok], [y for y, ok in zip((a.start, a.end), same) if not ok])
        if isinstance(g, sympy.FiniteSet) and isinstance(a, sympy.FiniteSet):
            if not _numbers(list(g) + list(a)):
                return None
            gv = sorted((_value_at(x, {}) or 0j for x in g), key=lambda c: (c.real, c.imag))
            av = sorted((_value_at(x, {}) or 0j for x in a), key=lambda c: (c.real, c.imag))
            if len(gv) != len(av):
                return False
            return all(_close(x, y)[0] for x, y in zip(gv, av)) or None
        if isinstance(g, sympy.Expr) and isinstance(a, sympy.Expr):
            if isinstance(g, (sympy.Tuple, sympy.MatrixBase)) or isinstance(a, (sympy.Tuple, sympy.MatrixBase)):
                return None
            return _numeric_identity(g, a)
    except Exception:  # noqa: BLE001 - undecided; math-verify gets its turn
        return None
    return None


def _as_interval(e: Any) -> Any | None:
    """The interval of an inequality in one variable with numeric bounds (``x < 3``, ``-1 < x \\le 2``)."""
    import sympy

    if isinstance(e, sympy.Interval):
        return e
    if isinstance(e, sympy.And) and len(e.args) == 2:
        parts = [_as_interval(x) for x in e.args]
        if any(p is None for p in parts):
            return None
        syms = {s for x in e.args for s in x.free_symbols}
        return parts[0].intersect(parts[1]) if len(syms) == 1 else None
    if not isinstance(e, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
        return None
    lhs, rhs = e.lhs, e.rhs
    if isinstance(rhs, sympy.Symbol) and lhs.is_number:
        lhs, rhs = rhs, lhs
        e = e.reversed
    if not (isinstance(lhs, sympy.Symbol) and rhs.is_number and rhs.is_real):
        return None
    if isinstance(e, sympy.StrictLessThan):
        return sympy.Interval(-sympy.oo, rhs, True, True)
    if isinstance(e, sympy.LessThan):
        return sympy.Interval(-sympy.oo, rhs, True, False)
    if isinstance(e, sympy.StrictGreaterThan):
        return sympy.Interval(rhs, sympy.oo, True, True)
    return sympy.Interval(rhs, sympy.oo, False, True)


def _numbers(xs: list[Any]) -> bool:
    import sympy

    return all(isinstance(x, sympy.Expr) and not x.free_symbols and x.is_number for x in xs)


def _all_equal(gs: list[Any], as_: list[Any]) -> bool | None:
    verdicts = [fast_compare(x, y) for x, y in zip(gs, as_)]
    if any(v is False for v in verdicts):
        return False
    if all(v is True for v in verdicts):
        return True
    return None


def _symbol_vs_expr_equal(g: Any, a: Any) -> bool:
    """math-verify compares a lone symbol only as text (``x`` vs ``x + x - x`` fails): check g - a == 0."""
    import sympy

    if not (isinstance(g, sympy.Expr) and isinstance(a, sympy.Expr)):
        return False
    if not (isinstance(g, sympy.Symbol) or isinstance(a, sympy.Symbol)):
        return False
    try:
        d = sympy.Add(g, sympy.Mul(-1, a))
        if d == 0:
            return True
        return bool(d.count_ops() <= 200 and sympy.simplify(d) == 0)
    except Exception:  # noqa: BLE001
        return False


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


def mathverify_warmup() -> None:
    from ._preload import WARM_ITEMS, warm  # the same parser warm-up as our workers get: a fair baseline

    warm()
    for response, gold in WARM_ITEMS:
        mathverify_baseline(response, gold)


def mathverify_baseline(response: str, gold: str, question: str | None = None) -> bool:
    """The public code's check: math-verify on the whole response against ``\\boxed{gold}``."""
    mv = _mv()
    try:
        g = mv.parse("\\boxed{" + gold + "}", parsing_timeout=None)
        p = mv.parse(response, parsing_timeout=None)
        return bool(mv.verify(g, p, timeout_seconds=None))
    except Exception:  # noqa: BLE001
        return False
