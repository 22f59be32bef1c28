"""Units of measurement after a number: which quantity they measure and their factor to a base unit.

``judge_units(answer, gold, gold_unit)`` compares a number gold stated in a unit with an answer in
another unit of the same quantity.  ``split_unit(text)`` reads a trailing unit (``5 m``, ``120 \\text{ minutes}``, ``2000 mm^2``,
``0.785 rad``, ``30^\\circ``) as ``(number text, Unit)``; ``convert(value, src, dst)`` converts an
exact value between units of one quantity.  Length, area, volume, time, mass and angle are known;
any other word after a number (``apples``, ``km/h``) is not a unit here and the comparison ignores
it, as before.  Degrees and radians convert with pi to 40 digits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .numeric import Num, numbers_match, parse_number
from .symbolic import numeric_value

PI = Fraction("3.1415926535897932384626433832795028841971")


@dataclass(frozen=True, slots=True)
class Unit:
    name: str
    quantity: str  # length | area | volume | time | mass | angle
    factor: Fraction  # value in the quantity's base unit (m, m^2, m^3, s, kg, degree)


def _table() -> dict[str, Unit]:
    out: dict[str, Unit] = {}

    def add(quantity: str, factor: Fraction, *names: str) -> None:
        for n in names:
            out[n] = Unit(names[0], quantity, factor)

    lengths = {
        "mm": (Fraction(1, 1000), ("millimeter", "millimeters", "millimetre", "millimetres")),
        "cm": (Fraction(1, 100), ("centimeter", "centimeters", "centimetre", "centimetres")),
        "dm": (Fraction(1, 10), ("decimeter", "decimeters")),
        "m": (Fraction(1), ("meter", "meters", "metre", "metres")),
        "km": (Fraction(1000), ("kilometer", "kilometers", "kilometre", "kilometres")),
        "in": (Fraction(254, 10000), ("inch", "inches")),
        "ft": (Fraction(3048, 10000), ("foot", "feet")),
        "yd": (Fraction(9144, 10000), ("yard", "yards")),
        "mi": (Fraction(1609344, 1000), ("mile", "miles")),
    }
    for sym, (f, words) in lengths.items():
        add("length", f, sym, *words)
        add("area", f * f, f"{sym}^2", f"{sym}^{{2}}", f"{sym}2", f"{sym}²", f"sq {sym}", *(f"square {w}" for w in words))
        add("volume", f * f * f, f"{sym}^3", f"{sym}^{{3}}", f"{sym}3", f"{sym}³", f"cubic {sym}", *(f"cubic {w}" for w in words))
    add("volume", Fraction(1, 1000), "l", "liter", "liters", "litre", "litres")
    add("volume", Fraction(1, 10**6), "ml", "milliliter", "milliliters", "millilitre", "millilitres")
    add("volume", Fraction(1, 10**5), "cl", "centiliter", "centiliters")
    add("time", Fraction(1, 1000), "ms", "millisecond", "milliseconds")
    add("time", Fraction(1), "s", "sec", "secs", "second", "seconds")
    add("time", Fraction(60), "min", "mins", "minute", "minutes")
    add("time", Fraction(3600), "h", "hr", "hrs", "hour", "hours")
    add("time", Fraction(86400), "day", "days")
    add("time", Fraction(604800), "week", "weeks")
    add("mass", Fraction(1, 10**6), "mg", "milligram", "milligrams")
    add("mass", Fraction(1, 1000), "g", "gram", "grams")
    add("mass", Fraction(1), "kg", "kilogram", "kilograms")
    add("mass", Fraction(1000), "t", "tonne", "tonnes", "ton", "tons")
    add("mass", Fraction(45359237, 10**8), "lb", "lbs", "pound", "pounds")
    add("mass", Fraction(45359237, 16 * 10**8), "oz", "ounce", "ounces")
    add("angle", Fraction(1), "°", "deg", "degree", "degrees", "\\circ")
    add("angle", 180 / PI, "rad", "rads", "radian", "radians")
    return out


UNITS = _table()

_DEGREE = re.compile(r"(?:\^\s{0,2}\{?\s{0,2}\\circ\s{0,2}\}?|°|\\degree)\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textrm|mbox|rm|operatorname)\s{0,2}\{([^{}]{0,40})\}")
_TRAIL = re.compile(r"(?:\\[,;:! ]|~|\s)+((?:sq|square|cubic)\s+[A-Za-z]{1,12}|[A-Za-zµ°²³]{1,12}(?:\s{0,2}\^\s{0,2}\{?[23]\}?|[23²³])?)\s*$")
_ATTACHED = re.compile(r"(?<=[\d.}])((?:[A-Za-zµ°²³]{1,3})(?:\^\{?[23]\}?|[23²³])?)\s*$")


def _lookup(word: str) -> Unit | None:
    w = re.sub(r"\s+", " ", word.strip()).replace("{", "").replace("}", "")
    return UNITS.get(w) or UNITS.get(w.lower())


def split_unit(text: str) -> tuple[str, Unit | None]:
    """``(number part, unit)`` of ``text``; the unit is None when no known unit ends it."""
    s = _TEXT_WRAP.sub(lambda m: " " + m.group(1).strip(), text.strip()).strip()
    if len(s) > 200:
        return text, None
    m = _DEGREE.search(s)
    if m:
        return s[: m.start()].strip(), UNITS["°"]
    for pat in (_TRAIL, _ATTACHED):
        m = pat.search(s)
        if m:
            u = _lookup(m.group(1))
            if u is not None and s[: m.start(1)].strip():
                return s[: m.start(1)].strip(), u
    return s, None


def convert(value: Fraction, src: Unit, dst: Unit) -> Fraction:
    """``value`` in ``src`` expressed in ``dst`` (same quantity)."""
    return value * src.factor / dst.factor


_CLOSE = Fraction(1, 10**30)


def judge_units(a: str, gold: Num | None, gu: Unit | None) -> tuple[bool, str] | None:
    """A number gold stated in a unit against an answer in another unit of the same quantity.

    None when units do not decide (the gold has no unit, the answer none or the same one).  The gold
    is converted into the answer's unit, keeping its precision, and compared as usual.  An answer
    with ``\\pi`` and no unit is in radians when the gold is an angle.
    """
    if gu is None or gold is None or gold.value is None:
        return None
    num_text, au = split_unit(a)
    if au is None and gu.quantity == "angle" and "\\pi" in a:
        au = UNITS["rad"]
    if au is None or au.factor == gu.factor and au.quantity == gu.quantity:
        return None
    if au.quantity != gu.quantity:
        return False, f"unit mismatch ({au.name} for {gu.name})"
    g = gold
    value = convert(g.value, gu, au)
    ratio = gu.factor / au.factor
    shift = round(math.log10(float(ratio)))
    target = Num(value, f"{value.numerator}/{value.denominator}", g.decimals - shift, g.sig, g.exact, g.percent)
    n = parse_number(num_text)
    if n is None:
        v = numeric_value(num_text)
        if v is None:
            return False, "not a number in the answer's unit"
        ok = abs(v - value) <= _CLOSE * max(1, abs(value))
        return ok, "unit conversion match (evaluated)" if ok else "unit conversion mismatch"
    ok = numbers_match(target, n) or (n.value is not None and abs(n.value - value) <= _CLOSE * max(1, abs(value)))
    return ok, "unit conversion match" if ok else "unit conversion mismatch"
