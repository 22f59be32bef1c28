"""Multiple-choice answers: gold letters A-K, reading an option letter out of an answer, options in a question.

A gold letter is only ever compared as a letter (never handed to sympy, where ``I`` is the imaginary
unit and ``E`` Euler's number).  Accepted spellings of option C: ``C``, ``(C)``, ``C.``, ``C)``,
``C) 55``, ``\\text{C}``, ``Option C``, ``**C**``, ``The answer is (C)``, ``C. 55 degrees``; when the
question lists its options, the option's text alone (``55``) also selects C.  Hedges (``C or D``,
``C, D``, ``CD``, ``C/D``) select nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .normalize import _SPACING, TEXT_COMMANDS, clean_answer, fold_text, unwrap_command

LETTERS = "ABCDEFGHIJK"

_GOLD = re.compile(r"\(?\s*([A-K])\s*\)?\s*[.:]?")
_LEAD = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\b[, ]{0,3})?(?:(?:the[ \t]{1,3})?(?:(?:final|correct|right|best)[ \t]{1,3})?(?:answer|option|choice)s?\b[ \t]{0,3}(?:is|:|=)?[ \t]{0,3}:?[ \t]{0,3})?",
    re.I,
)
_SINGLE = re.compile(r"\(?\s*([A-Ka-k])\s*\)?\s*[.:]?")
_MULTI = re.compile(r"\(?([A-K])\)?(?:[ \t]{0,3}(?:,|/|&|\+|;|\bor\b|\band\b|\band/or\b)[ \t]{0,3}\(?([A-K])\)?){1,10}")
_RUN = re.compile(r"[A-K]{2,11}")
_WITH_TEXT = re.compile(r"\(?([A-K])[ \t]{0,3}[\).:：\]][ \t]{0,3}(\S.*)", re.S)
_PAREN_TEXT = re.compile(r"\(([A-K])\)[ \t]{0,3}(\S.*)", re.S)
_SPACE_TEXT = re.compile(r"([A-K])[ \t]{1,3}([0-9$\\\-+(.].*)", re.S)
_HEDGE_IN_TEXT = re.compile(r"\b(?:or|and)[ \t]{1,3}\(?[A-K]\)?(?=[\s.):,]|$)")
_OPT_MARKER = re.compile(r"(?:^|(?<=[\s:]))\(?([A-K])[\).:：][ \t]")


def gold_letter(gold: str) -> str | None:
    """``"C"``, ``"(C)"``, ``"C."``, ``"\\text{C}"``, ``"\\boxed{C}"`` -> ``"C"``; anything else -> None."""
    g = unwrap_command(clean_answer(gold), TEXT_COMMANDS).strip()
    if len(g) > 12:
        return None
    m = _GOLD.fullmatch(g)
    return m.group(1) if m else None


@dataclass(frozen=True, slots=True)
class ChoiceRead:
    letter: str | None
    problem: str | None = None  # hedge / contradictory option text / not an option letter
    text: str | None = None  # option text given after the letter, if any


def _strip_answer(answer: str) -> str:
    a = clean_answer(answer)
    a = unwrap_command(a, TEXT_COMMANDS)
    a = a.replace("**", "").replace("__", "").replace("$", "")
    a = _SPACING.sub(" ", a).strip()
    for _ in range(3):
        b = _LEAD.sub("", a, count=1).strip()
        if b == a:
            break
        a = b
    a = a.strip().rstrip(".。").strip()
    return a


def parse_options(question: str | None) -> dict[str, str]:
    """The options listed in a question (``A. 55``/``(B) 65``/``C: 75`` ...) as ``{letter: text}``."""
    if not question:
        return {}
    q = question[-20_000:]
    marks = list(_OPT_MARKER.finditer(q))
    if len(marks) < 2:
        return {}
    # runs of consecutive letters A, B, C ... ; keep the longest (the last on ties)
    best: list[re.Match[str]] = []
    run: list[re.Match[str]] = []
    for m in marks:
        letter = m.group(1)
        if letter == "A":
            run = [m]
        elif run and ord(letter) == ord(run[-1].group(1)) + 1:
            run.append(m)
        else:
            continue
        if len(run) >= len(best):
            best = list(run)
    if len(best) < 2:
        return {}
    out: dict[str, str] = {}
    for i, m in enumerate(best):
        end = best[i + 1].start() if i + 1 < len(best) else len(q)
        text = q[m.end() : end]
        if i + 1 == len(best):
            text = text.split("\n", 1)[0]
        out[m.group(1)] = text.strip().rstrip(",;").strip()
    return out


def _same_option_text(a: str, b: str) -> bool:
    from .numeric import numbers_match, parse_number  # local: numeric imports nothing from here

    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return numbers_match(nb, na)
    fa, fb = fold_text(a), fold_text(b)
    return bool(fa) and fa == fb


def option_for_text(text: str, options: dict[str, str]) -> str | None:
    """The single option whose text equals ``text`` (folded text or equal numbers), else None."""
    hits = [k for k, v in options.items() if v and _same_option_text(text, v)]
    return hits[0] if len(hits) == 1 else None


def read_choice(answer: str, options: dict[str, str] | None = None) -> ChoiceRead:
    """The option letter an extracted answer selects (see the module docstring)."""
    a = _strip_answer(answer)
    if not a:
        return ChoiceRead(None, "empty answer")
    if len(a) > 2000:
        return ChoiceRead(None, "not an option letter")
    m = _SINGLE.fullmatch(a)
    if m:
        return ChoiceRead(m.group(1).upper())
    m = _MULTI.fullmatch(a)
    if m:
        letters = set(re.findall(r"[A-K]", a))
        if len(letters) == 1:
            return ChoiceRead(letters.pop())
        return ChoiceRead(None, "hedged between options " + "/".join(sorted(letters)))
    if _RUN.fullmatch(a) and len(set(a)) > 1:
        return ChoiceRead(None, "hedged between options " + "/".join(sorted(set(a))))
    m = _PAREN_TEXT.fullmatch(a) or _WITH_TEXT.fullmatch(a) or _SPACE_TEXT.fullmatch(a)
    if m:
        letter, text = m.group(1), m.group(2).strip()
        if _HEDGE_IN_TEXT.search(text):
            return ChoiceRead(None, "hedged between options")
        if options and letter in options and options[letter]:
            if not _same_option_text(text, options[letter]) and option_for_text(text, options) not in (None, letter):
                return ChoiceRead(None, f"option letter {letter} contradicts its text", text)
        return ChoiceRead(letter, None, text)
    if options:
        hit = option_for_text(a, options)
        if hit:
            return ChoiceRead(hit, None, a)
    return ChoiceRead(None, "not an option letter")
