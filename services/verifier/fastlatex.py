"""A fast reader for simple LaTeX expressions, tried before math-verify's ANTLR parser.

latex2sympy's ANTLR parser costs 5-300 ms per expression in pure Python; most answers are
small polynomials, fractions, roots and multiples of pi, which this reader turns into sympy in well
under a millisecond.  It accepts only: numbers, single-letter variables (not ``e``/``i``, whose
meaning depends on context), ``+ - * / ^``, parentheses and braces, ``\\frac``/``\\dfrac``/``\\tfrac``,
``\\sqrt``/``\\sqrt[n]``, ``\\pi``, ``\\cdot``/``\\times`` and ``\\left``/``\\right``.  Anything else
returns None and goes to math-verify.  Variables are ``Symbol(name, real=True)``, exactly as
latex2sympy makes them, so objects from both readers compare.

``fast_container`` reads lists of such expressions the way math-verify does: ``a, b`` and
``\\{a, b\\}`` are sets, ``(a, b)`` / ``[a, b]`` / ``(a, b]`` with numbers ``a < b`` are intervals
(``\\infty`` allowed), other parenthesised lists are tuples; anything else returns None.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MAX_CHARS = 200
_TOKEN = re.compile(r"\\(?:frac|dfrac|tfrac|sqrt|pi|cdot|times|left|right)(?![A-Za-z])|\d+(?:\.\d+)?|\.\d+|[A-Za-z]|[-+*/^(){}\[\]]|\s+")
_ALLOWED_CHARS = re.compile(r"[0-9a-z+\-*/^(){}\[\]. \\]*")
# shapes where math-verify's reading is not the plain one (mixed numbers, "1 200", words, x^23, sets)
_AMBIGUOUS = re.compile(r"\d\s+\.?\d|\d\s*\\[dt]?frac|\^\s*\d{2}|^\s*\{")
_WORD = re.compile(r"[a-z]{2,}")


class _Reject(Exception):
    """Private control flow: the fast path gives up on an expression (``fast_parse`` returns None).
    Caught in this module, never raised out of it, so it stays outside the project's
    ``RethinkerError`` hierarchy (common/errors.py)."""


def _to_python(s: str) -> str:
    """The expression in Python syntax, implicit products made explicit; raises _Reject."""
    toks = [t for t in _TOKEN.findall(s) if not t.isspace()]
    if "".join(toks) != re.sub(r"\s+", "", s):
        raise _Reject
    out: list[str] = []
    pos = 0

    def group() -> str:
        nonlocal pos
        if pos < len(toks) and toks[pos] == "{":
            pos += 1
            inner = expr_until("}")
            pos += 1
            return "(" + inner + ")"
        if pos < len(toks) and re.fullmatch(r"\d", toks[pos][:1] or "x") and toks[pos].isdigit():
            # \frac12: single digits
            t = toks[pos]
            pos += 1 if len(t) == 1 else 0
            if len(t) != 1:
                toks[pos] = t[1:]
                return t[0]
            return t
        if pos < len(toks) and re.fullmatch(r"[A-Za-z]", toks[pos]):
            return atom()
        raise _Reject

    def atom() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise _Reject
        t = toks[pos]
        if t in ("\\frac", "\\dfrac", "\\tfrac"):
            pos += 1
            a = group()
            b = group()
            return f"(({a})/({b}))"
        if t == "\\sqrt":
            pos += 1
            if pos < len(toks) and toks[pos] == "[":
                pos += 1
                n = expr_until("]")
                pos += 1
                return f"(({group()})**(1/({n})))"
            return f"sqrt({group()})"
        if t == "\\pi":
            pos += 1
            return "pi"
        if t in ("\\left", "\\right"):
            pos += 1
            return ""
        if t in ("(", "{"):
            pos += 1
            inner = expr_until(")" if t == "(" else "}")
            pos += 1
            return "(" + inner + ")"
        if re.fullmatch(r"[A-Za-z]", t):
            if t in "eiEI":
                raise _Reject
            pos += 1
            return f"S_{t}"
        if t[0].isdigit() or t[0] == ".":
            pos += 1
            return t
        raise _Reject

    def expr_until(stop: str | None) -> str:
        nonlocal pos
        parts: list[str] = []
        prev_operand = False
        while pos < len(toks) and toks[pos] != stop:
            t = toks[pos]
            if t in (")", "}", "]"):
                raise _Reject
            if t in ("+", "-", "*", "/"):
                parts.append(t)
                pos += 1
                prev_operand = False
                continue
            if t in ("\\cdot", "\\times"):
                parts.append("*")
                pos += 1
                prev_operand = False
                continue
            if t == "^":
                pos += 1
                if pos < len(toks) and toks[pos] == "{":
                    parts.append("**" + group())
                elif pos < len(toks) and (toks[pos].isdigit() or re.fullmatch(r"[A-Za-z]", toks[pos])):
                    t2 = toks[pos]
                    if t2.isdigit() and len(t2) > 1:  # x^23 means x^2 * 3 in LaTeX
                        toks[pos] = t2[1:]
                        parts.append("**" + t2[0])
                    else:
                        parts.append("**" + atom())
                        continue
                else:
                    raise _Reject
                continue
            if t in ("\\left", "\\right"):
                pos += 1
                continue
            a = atom()
            if not a:
                continue
            if prev_operand:
                parts.append("*")
            parts.append(a)
            prev_operand = True
        if stop is not None and pos >= len(toks):
            raise _Reject
        return "".join(parts)

    expr = expr_until(None)
    if not expr:
        raise _Reject
    out.append(expr)
    return "".join(out)


@lru_cache(maxsize=8192)
def fast_parse(latex: str) -> Any | None:
    """A sympy expression for a simple LaTeX expression, or None (see the module docstring)."""
    s = latex.strip()
    if not s or len(s) > MAX_CHARS or not _ALLOWED_CHARS.fullmatch(s) or "[" in s.replace("\\sqrt[", ""):
        return None
    if _AMBIGUOUS.search(s) or _WORD.search(re.sub(r"\\(?:frac|dfrac|tfrac|sqrt|pi|cdot|times|left|right)", " ", s)):
        return None
    try:
        code = _to_python(s)
    except (_Reject, IndexError):
        return None
    import sympy

    names = {f"S_{c}": sympy.Symbol(c, real=True) for c in set(re.findall(r"S_([A-Za-z])", code))}
    names.update({"sqrt": sympy.sqrt, "pi": sympy.pi})
    try:
        expr = sympy.parse_expr(code, local_dict=names, global_dict={"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational, "Symbol": sympy.Symbol}, evaluate=True)
    except Exception:  # noqa: BLE001 - anything odd: let math-verify read it
        return None
    if not isinstance(expr, sympy.Expr):
        return None
    return expr


_INFTY = {"\\infty": "oo", "+\\infty": "oo", "-\\infty": "-oo"}
MAX_ITEMS = 32


def _split_items(s: str) -> list[str] | None:
    """Top-level comma-separated items of ``s`` (commas inside brackets stay), or None without one."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, c in enumerate(s):
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
            if depth < 0:
                return None
        elif c == "," and depth == 0:
            items.append(s[start:i].strip())
            start = i + 1
    items.append(s[start:].strip())
    return items if len(items) >= 2 and all(items) and len(items) <= MAX_ITEMS else None


def _item(s: str) -> Any | None:
    import sympy

    inf = _INFTY.get(s.replace(" ", ""))
    if inf is not None:
        return sympy.oo if inf == "oo" else -sympy.oo
    return fast_parse(s)


def _finite_set(vals: list[Any]) -> Any:
    """math-verify's set class (it keeps the written order for its own comparisons)."""
    try:
        from latex2sympy2_extended.sets import FiniteSet
    except ImportError:  # pragma: no cover - math-verify always brings it
        from sympy import FiniteSet
    return FiniteSet(*vals)


@lru_cache(maxsize=8192)
def fast_container(latex: str) -> Any | None:
    """A sympy set, interval or tuple for a list of simple expressions, or None (module docstring)."""
    import sympy

    s = latex.strip()
    if not s or len(s) > MAX_CHARS * 2:
        return None
    if s.startswith("\\{") and s.endswith("\\}"):
        items = _split_items(s[2:-2])
        vals = None if items is None else [_item(x) for x in items]
        return _finite_set(vals) if vals and all(v is not None for v in vals) else None
    if s[0] in "([" and s[-1] in ")]":
        items = _split_items(s[1:-1])
        if items is None:
            return None
        vals = [_item(x) for x in items]
        if any(v is None for v in vals):
            return None
        if len(vals) == 2:
            a, b = vals
            if not (a.is_number and b.is_number and a.is_extended_real and b.is_extended_real):
                return None
            if bool(a < b):
                return sympy.Interval(a, b, left_open=s[0] == "(", right_open=s[-1] == ")")
            return sympy.Tuple(a, b) if s[0] == "(" and s[-1] == ")" else None
        return sympy.Tuple(*vals) if s[0] == "(" and s[-1] == ")" else None
    if ", " not in s or "\\" in s.replace("\\frac", "").replace("\\sqrt", "").replace("\\pi", ""):
        return None
    items = _split_items(s)
    vals = None if items is None else [_item(x) for x in items]
    return _finite_set(vals) if vals and all(v is not None for v in vals) else None
