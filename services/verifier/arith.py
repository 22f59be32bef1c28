"""Exact, iterative evaluation of long or deeply nested simple expressions that sympy must not see.

Hostile answers can be equal to the gold and still be too long or too deep for sympy's recursive
parser (``x+x+...+x`` for ``3000x``, 200 nested square roots of 1, the ratio of two equal 5000-digit
integers).  ``same_value(gold, answer)`` reads both with a shunting-yard parser (no recursion) over
numbers, one-letter variables, ``+ - * / ^``, ``\\frac{}{}``, ``\\sqrt{}``, ``\\cdot``/``\\times``
and brackets, evaluates them exactly with ``Fraction`` at three rational points, and answers
True/False, or None when it cannot tell (other syntax, an irrational square root, a huge power).
Time and memory are linear in the input for the accepted syntax; powers and integer sizes are capped.
"""

from __future__ import annotations

import re
from fractions import Fraction
from math import isqrt

MAX_CHARS = 200_000
MAX_INT_DIGITS = 20_000
MAX_EXPONENT = 64
MAX_BITS = 200_000
_VALUES = (Fraction(7, 10), Fraction(13, 10), Fraction(-8, 10))
_TOKEN = re.compile(r"\\(?:frac|dfrac|tfrac|sqrt|cdot|times|left|right)(?![A-Za-z])|\d+(?:\.\d+)?|[A-Za-z]|[-+*/^(){}]|\s+")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}


class _Undecided(Exception):
    """Private control flow: exact arithmetic cannot decide (the check returns None).  Caught in
    this module, never raised out of it, so it stays outside the project's ``RethinkerError``
    hierarchy (common/errors.py)."""


def _int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS:
        raise _Undecided
    n = 0
    for i in range(0, len(digits), 4000):  # int() refuses > 4300 digits at once
        chunk = digits[i : i + 4000]
        n = n * 10 ** len(chunk) + int(chunk)
    return n


def _tokens(s: str) -> list[str]:
    """Tokens in plain infix form: ``\\frac{a}{b}`` -> ``( ( a ) / ( b ) )``, ``\\sqrt{a}`` -> ``sqrt ( a )``."""
    raw = [t for t in _TOKEN.findall(s) if not t.isspace()]
    if sum(len(t) for t in raw) != len(re.sub(r"\s+", "", s)):
        raise _Undecided
    out: list[str] = []
    stack: list[str] = []  # per open "{": plain | num | den | sqrt
    expect = ""  # what the next "{" opens
    for t in raw:
        if t in ("\\left", "\\right"):
            continue
        if expect and t != "{":
            raise _Undecided  # \frac12 and \sqrt[n] are not read here
        if t in ("\\frac", "\\dfrac", "\\tfrac"):
            expect = "num"
            continue
        if t == "\\sqrt":
            expect = "sqrt"
            continue
        if t == "{":
            kind, expect = expect or "plain", ""
            stack.append(kind)
            out += {"num": ["(", "("], "den": ["/", "("], "sqrt": ["sqrt", "("], "plain": ["("]}[kind]
            continue
        if t == "}":
            if not stack:
                raise _Undecided
            kind = stack.pop()
            out += [")", ")"] if kind == "den" else [")"]
            if kind == "num":
                expect = "den"
            continue
        out.append("*" if t in ("\\cdot", "\\times") else t)
    if stack or expect:
        raise _Undecided
    return out


def _operand(t: str) -> bool:
    return t[0].isdigit() or (len(t) == 1 and t.isalpha())


def _rpn(tokens: list[str]) -> list[str]:
    out: list[str] = []
    ops: list[str] = []
    prev = ""  # "" | operand | ( | op
    for t in tokens:
        if _operand(t) or t in ("(", "sqrt"):
            if prev in ("operand", ")"):
                _push_op("*", ops, out)  # implicit product: 3000x, 2(x+1)
            if _operand(t):
                out.append(t)
                prev = "operand"
            else:
                ops.append(t)
                prev = "(" if t == "(" else "fn"
            continue
        if t == ")":
            while ops and ops[-1] != "(":
                out.append(ops.pop())
            if not ops:
                raise _Undecided
            ops.pop()
            if ops and ops[-1] == "sqrt":
                out.append(ops.pop())
            prev = ")"
            continue
        if t in "+-" and prev in ("", "(", "op", "fn"):
            if t == "-":
                ops.append("neg")  # a prefix operator pops nothing
            prev = "op"
            continue
        if t not in _PREC:
            raise _Undecided
        _push_op(t, ops, out)
        prev = "op"
    while ops:
        op = ops.pop()
        if op == "(":
            raise _Undecided
        out.append(op)
    return out


def _push_op(op: str, ops: list[str], out: list[str]) -> None:
    right = op in ("^", "neg")
    while ops and ops[-1] in _PREC and (_PREC[ops[-1]] > _PREC[op] or (_PREC[ops[-1]] == _PREC[op] and not right)):
        out.append(ops.pop())
    ops.append(op)


def _sqrt(x: Fraction) -> Fraction:
    if x < 0:
        raise _Undecided
    n, d = isqrt(x.numerator), isqrt(x.denominator)
    if n * n != x.numerator or d * d != x.denominator:
        raise _Undecided  # irrational: not decided here
    return Fraction(n, d)


def _evaluate(rpn: list[str], point: dict[str, Fraction]) -> Fraction:
    st: list[Fraction] = []
    for t in rpn:
        if t[0].isdigit():
            whole, _, frac = t.partition(".")
            st.append(Fraction(_int(whole + frac), 10 ** len(frac)))
        elif len(t) == 1 and t.isalpha():
            if t not in point:
                raise _Undecided
            st.append(point[t])
        elif t == "neg":
            st.append(-st.pop())
        elif t == "sqrt":
            st.append(_sqrt(st.pop()))
        else:
            b, a = st.pop(), st.pop()
            if t == "+":
                st.append(a + b)
            elif t == "-":
                st.append(a - b)
            elif t == "*":
                st.append(a * b)
            elif t == "/":
                if b == 0:
                    raise _Undecided
                st.append(a / b)
            else:
                if b.denominator != 1 or abs(b) > MAX_EXPONENT:
                    raise _Undecided
                if a == 0 and b < 0:
                    raise _Undecided
                st.append(a ** int(b))
            if st[-1].numerator.bit_length() + st[-1].denominator.bit_length() > MAX_BITS:
                raise _Undecided
    if len(st) != 1:
        raise _Undecided
    return st[0]


def _read(s: str) -> list[str]:
    if len(s) > MAX_CHARS:
        raise _Undecided
    return _rpn(_tokens(s))


def same_value(gold: str, answer: str) -> bool | None:
    """Do ``gold`` and ``answer`` have the same value everywhere (see the module docstring)?"""
    try:
        g, a = _read(gold), _read(answer)
        names = sorted({t for t in g + a if len(t) == 1 and t.isalpha()})
        if any(n in "eiEI" for n in names):
            return None
        for k in range(3):
            point = {n: _VALUES[(k + j) % 3] + j for j, n in enumerate(names)}
            if _evaluate(g, point) != _evaluate(a, point):
                return False
            if not names:
                break
        return True
    except (_Undecided, IndexError, ZeroDivisionError, ValueError, OverflowError):
        return None
