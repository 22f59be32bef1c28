"""Numbers as people write them, compared at the precision the gold answer states.

``parse_number`` reads: thousands separators (``1,200``, ``1{,}200``, ``1\\,200``, ``1 200``),
decimals, signs, percent forms, e-notation and ``\\times 10^{k}``, simple fractions and mixed numbers,
``x = 3``/``\\approx``, number words (``twenty-one``), with units, currency and degree signs stripped.
It returns None for anything else (expressions go to the symbolic checker).

``numbers_match(gold, resp)``:
- equal values match;
- a gold written as a decimal or in scientific notation states its precision (the place of its
  last digit): the response matches if it rounds (half-up or half-even) to the gold at that place, so
  ``3.14`` accepts ``3.14159`` and ``1.6e-19`` accepts ``1.602e-19`` but never ``9.1e-31`` (the
  comparison is relative to the gold's own scale, not an absolute epsilon);
- a gold that is exact (an integer or fraction) accepts a decimal response only if the response has
  at least 3 significant digits and equals the gold rounded at the response's last digit (``1/3``
  accepts ``0.333``, ``7`` never accepts ``6.99``);
- percent signs are optional on either side (``50%`` ~ ``50`` ~ ``0.5`` for a gold of ``50%``).
Numbers with more than ``MAX_DIGITS`` digits or exponents beyond ``MAX_EXP`` are compared by their
canonical digit string only (no arithmetic on a 10^6-digit number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from .normalize import clean_answer, unwrap_command

MAX_DIGITS = 400
MAX_EXP = 400
MAX_INPUT_CHARS = 2_000_000


@dataclass(frozen=True, slots=True)
class Num:
    value: Fraction | None  # None: too large for arithmetic; compare ``key``
    key: str  # canonical sign/digits/exponent text
    decimals: int  # the stated precision: the last written digit is at 10**-decimals
    sig: int  # significant digits as written
    exact: bool  # an integer or a fraction (no stated precision)
    percent: bool = False


_LHS = re.compile(r"^(?:[A-Za-z](?:_\{?\w{1,4}\}?)?|\\[A-Za-z]{2,10}(?:_\{?\w{1,4}\}?)?)[ \t]{0,3}(?:=|\\approx|≈)[ \t]{0,3}")
_APPROX = re.compile(r"^(?:\\approx|≈|~|=)[ \t]{0,3}")
_PERCENT = re.compile(r"(?:[ \t]{0,3}\\?%|[ \t]{1,3}percent|[ \t]{1,3}per[ \t]cent)$", re.I)
_DEGREE = re.compile(r"\^[ \t]{0,3}\{?[ \t]{0,3}\\circ[ \t]{0,3}\}?|°|\\degree\b|\\circ\b|[ \t]{1,3}degrees?\b|\{\}\^\{\\circ\}", re.I)
_CURRENCY = re.compile(r"^(?:\\\$|\$|USD|US\$|€|£|¥|\\euro)[ \t]{0,2}")
_CURRENCY_AFTER = re.compile(r"[ \t]{0,2}(?:\\\$|\$|USD|EUR|€|£|¥|\\euro)$")  # "1.234,50 €"
_MODULUS = re.compile(r"[ \t]{0,3}(?:\\pmod[ \t]{0,2}\{?[ \t]{0,2}\d{1,12}[ \t]{0,2}\}?|\([ \t]{0,2}\\?mod[ \t]{1,3}\d{1,12}[ \t]{0,2}\)|\\bmod[ \t]{0,2}\d{1,12}|\\mod[ \t]{0,2}\d{1,12}|mod[ \t]{1,3}\d{1,12})$")
# locale forms: 1.234,5 / 1.234.567 / 1 234,5 / 1'234 / a lone decimal comma (3,5 and 2,1875; not 1,234)
_LOCALE_DOT_GROUPS_COMMA = re.compile(r"([-+]?)(\d{1,3}(?:\.\d{3})+),(\d{1,30})(?![\d.,])")
_LOCALE_DOT_GROUPS = re.compile(r"([-+]?)(\d{1,3}(?:\.\d{3}){2,})(?![\d.,])")
_LOCALE_SPACE_COMMA = re.compile(r"([-+]?)(\d{1,3}(?:[ '’]\d{3})+),(\d{1,30})(?![\d.,])")
_LOCALE_APOSTROPHE = re.compile(r"([-+]?)(\d{1,3}(?:['’]\d{3})+)(?![\d,'’])")
_LOCALE_COMMA = re.compile(r"([-+]?)(\d{1,30}),(\d{1,2}|\d{4,30})(?![\d.,])")


def _locale(t: str) -> str:
    """A number written with European/Swiss separators in the plain form (``1.234,5`` -> ``1234.5``)."""
    m = _LOCALE_DOT_GROUPS_COMMA.match(t) or _LOCALE_SPACE_COMMA.match(t)
    if m:
        return m.group(1) + re.sub(r"[. '’]", "", m.group(2)) + "." + m.group(3) + t[m.end() :]
    m = _LOCALE_DOT_GROUPS.match(t) or _LOCALE_APOSTROPHE.match(t)
    if m:
        return m.group(1) + re.sub(r"[.'’]", "", m.group(2)) + t[m.end() :]
    m = _LOCALE_COMMA.match(t)
    if m and not t[m.end() :].lstrip().startswith(","):
        return m.group(1) + m.group(2) + "." + m.group(3) + t[m.end() :]
    return t


_THIN = re.compile(r"\{,\}|\\[,;:! ]|~|[\u2009\u202f\u00a0]")

_NUM = re.compile(
    r"(?P<sign>[+-]?)[ \t]{0,2}(?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d{1,3}(?: \d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)"
    r"(?:[eE](?P<e1>[+-]?\d{1,12})|[ \t]{0,2}(?:\\times|\\cdot|\*|×|·|x)[ \t]{0,2}10[ \t]{0,2}(?:\^|\*\*)[ \t]{0,2}\{?[ \t]{0,2}(?P<e2>[+-]?\d{1,12})[ \t]{0,2}\}?)?"
)
_POW10 = re.compile(r"(?P<sign>[+-]?)[ \t]{0,2}10[ \t]{0,2}\^[ \t]{0,2}\{?[ \t]{0,2}(?P<e>[+-]?\d{1,12})[ \t]{0,2}\}?")
_FRAC = re.compile(
    r"(?P<sign>[+-]?)[ \t]{0,2}(?P<whole>\d{1,12}[ \t]{0,2})?\\frac[ \t]{0,2}(?:\{[ \t]{0,2}(?P<n>[+-]?\d{1,30}(?:\.\d{1,30})?)[ \t]{0,2}\}|(?P<n1>\d))"
    r"[ \t]{0,2}(?:\{[ \t]{0,2}(?P<d>[+-]?\d{1,30}(?:\.\d{1,30})?)[ \t]{0,2}\}|(?P<d1>\d))"
)
_SLASH = re.compile(r"(?P<sign>[+-]?)[ \t]{0,2}(?:(?P<whole>\d{1,12})[ \t]{1,2})?(?P<n>\d{1,30}(?:\.\d{1,30})?)[ \t]{0,2}/[ \t]{0,2}(?P<d>\d{1,30}(?:\.\d{1,30})?)")

_UNIT_WORD = r"[A-Za-zµΩÅ]{1,15}(?:\^\{?-?\d{1,2}\}?|\d)?"
_UNIT = re.compile(rf"{_UNIT_WORD}(?:[ \t]{{0,2}}(?:/|\*|·|\\cdot|[ \t])[ \t]{{0,2}}{_UNIT_WORD}){{0,4}}")
_ATTACHED_UNITS = {
    "mm", "cm", "dm", "m", "km", "in", "ft", "yd", "mi", "mg", "g", "kg", "lb", "lbs", "oz", "t", "ml", "l", "dl",
    "s", "ms", "min", "h", "hr", "hrs", "sec", "n", "kn", "j", "kj", "w", "kw", "v", "mv", "hz", "khz", "mhz",
    "pa", "kpa", "mpa", "mol", "k", "c", "f", "cal", "kcal", "ev", "kev", "mev", "a", "ma", "mph", "kmh",
}
_NOT_UNITS = {
    "or", "and", "to", "plus", "minus", "times", "over", "of", "by", "pi", "e", "i", "j", "x", "y", "z", "n",
    "sqrt", "root", "squared", "cubed", "not", "nor", "than", "more", "less", "at", "least", "most", "with",
    "sin", "cos", "tan", "log", "ln", "exp", "is", "are", "if", "then", "else", "but", "approximately",
}

_SMALL = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALE_WORD = re.compile(r"[ \t]{1,3}(thousand|million|billion|trillion)\b", re.I)
_SCALE_EXP = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}


def _words_to_int(text: str) -> int | None:
    words = [w for w in re.split(r"[\s\-]+", text.lower().strip()) if w and w != "and"]
    if not words or len(words) > 12:
        return None
    sign = 1
    if words[0] in ("minus", "negative"):
        sign, words = -1, words[1:]
    if len(words) > 1 and words[0] == "a" and words[1] in _SCALES:
        words = ["one"] + words[1:]
    if not words:
        return None
    total = current = 0
    seen = False
    for w in words:
        if w in _SMALL:
            current += _SMALL[w]
            seen = True
        elif w == "hundred" and seen:
            current *= 100
        elif w in _SCALES and seen:
            total += current * _SCALES[w]
            current = 0
        else:
            return None
    return sign * (total + current)


def _canonical(sign: str, int_part: str, frac_part: str, exp: int) -> tuple[str, int, int]:
    """(key, decimals, sig) of sign * int_part.frac_part * 10**exp, by string operations only."""
    digits = (int_part + frac_part).lstrip("0")
    decimals = len(frac_part) - exp
    sig = len(digits)
    stripped = digits.rstrip("0")
    last_exp = -decimals + (len(digits) - len(stripped))
    if not stripped:
        return "0", decimals, max(sig, 1)
    neg = "-" if sign == "-" else ""
    return f"{neg}{stripped}e{last_exp}", decimals, sig


def _make(sign: str, mant: str, exp: int, *, exact: bool, percent: bool) -> Num | None:
    mant = mant.replace(",", "").replace(" ", "")
    int_part, _, frac_part = mant.partition(".")
    key, decimals, sig = _canonical(sign, int_part, frac_part, exp)
    value: Fraction | None = None
    if len(int_part) + len(frac_part) <= MAX_DIGITS and abs(exp) <= MAX_EXP:
        v = Fraction(int((int_part + frac_part) or "0")) / (10 ** len(frac_part))
        v = v * (Fraction(10) ** exp)
        value = -v if sign == "-" else v
    return Num(value, key, decimals, sig, exact, percent)


def _unit_ok(rest: str, attached: bool) -> bool:
    rest = rest.strip()
    if not rest:
        return True
    if len(rest) > 80 or not _UNIT.fullmatch(rest):
        return False
    words = re.findall(r"[A-Za-zµΩÅ]+", rest)
    if any(w.lower() in _NOT_UNITS for w in words):
        return False
    if attached or (len(words) == 1 and len(words[0]) == 1):
        return rest.lower().split("^")[0].split("/")[0] in _ATTACHED_UNITS
    return True


def _prepare(s: str) -> tuple[str, bool] | None:
    t = clean_answer(s)
    if not t or len(t) > MAX_INPUT_CHARS:
        return None
    t = _THIN.sub(" ", t).replace("\u2212", "-")
    t = t.replace("{,}", ",")
    # \text{ cm} -> " cm" so a unit stays separated from its number
    if "\\" in t:
        t = re.sub(r"\\(?:text|mathrm|textrm|mbox|rm|textit)[ \t]{0,2}\{", " {", t)
        t = unwrap_command(t, ("text", "mathrm", "textrm", "mbox", "rm", "textit"))
        t = re.sub(r"(?<![\\\w])\{([^{}]{0,60})\}", r"\1", t)  # stray braces around a unit
    t = t.strip()
    t = _LHS.sub("", t, count=1) if "=" in t or "approx" in t or "≈" in t else t
    t = _APPROX.sub("", t, count=1)
    t = _DEGREE.sub("", t).strip()
    percent = False
    m = _PERCENT.search(t)
    if m:
        percent = True
        t = t[: m.start()].strip()
    t = _CURRENCY.sub("", t, count=1).strip()
    t = t.rstrip(".").strip()
    t = _CURRENCY_AFTER.sub("", t, count=1).strip()
    t = _MODULUS.sub("", t).strip()
    t = _locale(t)
    return t, percent


def parse_number(s: str) -> Num | None:
    """A number (with its stated precision) or None; see the module docstring for the forms read."""
    if not isinstance(s, str) or not s or len(s) > MAX_INPUT_CHARS:
        return None
    prep = _prepare(s)
    if prep is None:
        return None
    t, percent = prep
    if not t:
        return None
    if t[0] not in "+-.0123456789\\":
        # number words: "five", "twenty-one", "a hundred"
        if len(t) <= 80 and re.fullmatch(r"[A-Za-z\s\-]+", t):
            n = _words_to_int(t)
            if n is not None:
                return _make("-" if n < 0 else "", str(abs(n)), 0, exact=True, percent=percent)
            # "five apples": words then a unit
            parts = t.split()
            for cut in range(len(parts) - 1, 0, -1):
                n = _words_to_int(" ".join(parts[:cut]))
                if n is not None and _unit_ok(" ".join(parts[cut:]), False):
                    return _make("-" if n < 0 else "", str(abs(n)), 0, exact=True, percent=percent)
        return None
    m = _FRAC.match(t)
    if m and _unit_ok(t[m.end() :], t[m.end() : m.end() + 1] not in (" ", "\t")):
        n = m.group("n") or m.group("n1")
        d = m.group("d") or m.group("d1")
        return _fraction(m.group("sign"), m.group("whole"), n, d, percent)
    m = _SLASH.match(t)
    if m and _unit_ok(t[m.end() :], t[m.end() : m.end() + 1] not in (" ", "\t")):
        return _fraction(m.group("sign"), m.group("whole"), m.group("n"), m.group("d"), percent)
    m = _POW10.match(t)
    if m and _unit_ok(t[m.end() :], False):
        return _make(m.group("sign"), "1", int(m.group("e")), exact=False, percent=percent)
    m = _NUM.match(t)
    if m is None:
        return None
    rest = t[m.end() :]
    scale = 0
    sm = _SCALE_WORD.match(rest)
    if sm:  # "1.5 million"
        scale = _SCALE_EXP[sm.group(1).lower()]
        rest = rest[sm.end() :]
    if not _unit_ok(rest, rest[:1] not in (" ", "\t", "")):
        return None
    e = m.group("e1") or m.group("e2")
    mant = m.group("mant")
    exact = e is None and "." not in mant
    return _make(m.group("sign"), mant, (int(e) if e else 0) + scale, exact=exact, percent=percent)


def _fraction(sign: str, whole: str | None, n: str, d: str, percent: bool) -> Num | None:
    try:
        fn, fd = Fraction(n), Fraction(d)
    except (ValueError, ZeroDivisionError):
        return None
    if fd == 0:
        return None
    v = fn / fd
    if whole and whole.strip():
        if v < 0:
            return None
        v = Fraction(int(whole)) + v
    if sign == "-":
        v = -v
    key = f"{v.numerator}/{v.denominator}"
    return Num(v, key, 0, 10**6, True, percent)


def _round(x: Fraction, decimals: int, half_even: bool) -> Fraction:
    q = Fraction(1, 10**decimals) if decimals >= 0 else Fraction(10 ** (-decimals))
    n = abs(x) / q
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and (not half_even or fl % 2 == 1)):
        fl += 1
    r = fl * q
    return -r if x < 0 else r


def _rounds_to(x: Fraction, target: Fraction, decimals: int) -> bool:
    if abs(decimals) > MAX_EXP + MAX_DIGITS:
        return x == target
    return _round(x, decimals, False) == target or _round(x, decimals, True) == target


def _close(gold: Num, resp: Num, g: Fraction, r: Fraction, g_dec: int, r_dec: int) -> bool:
    if g == r:
        return True
    if gold.exact:
        # an exact gold: only a decimal response stated to >= 3 significant digits, and right there
        return (not resp.exact) and resp.sig >= 3 and _rounds_to(g, r, r_dec)
    if resp.exact or r_dec >= g_dec:
        return _rounds_to(r, g, g_dec)
    # the response states fewer digits than the gold: right only if it is still precise (>= 6 digits)
    return resp.sig >= 6 and _rounds_to(g, r, r_dec)


def numbers_match(gold: Num, resp: Num) -> bool:
    """Is ``resp`` the gold number at the gold's stated precision (see the module docstring)?"""
    if gold.value is None or resp.value is None:
        return gold.key == resp.key
    pairs = [(gold.value, resp.value, gold.decimals, resp.decimals)]
    if resp.percent and not gold.percent:
        pairs.append((gold.value, resp.value / 100, gold.decimals, resp.decimals + 2))
    if gold.percent and not resp.percent:
        pairs.append((gold.value / 100, resp.value, gold.decimals + 2, resp.decimals))
    return any(_close(gold, resp, g, r, gd, rd) for g, r, gd, rd in pairs)


def value_as_num(value: Fraction, *, exact: bool, sig: int = 30, decimals: int = 30) -> Num:
    """A ``Num`` for a computed value (e.g. sympy's evaluation of ``\\sqrt{2}``)."""
    return Num(value, f"{value.numerator}/{value.denominator}", decimals, sig, exact, False)
