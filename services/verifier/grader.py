"""``grade(response, gold)``: one verdict, with fast paths before any sympy.

Flow: read the gold once (cached: golds repeat n times per group) into a kind -- ``choice`` (a
letter A-K), ``number``, ``text`` (words such as Yes/No/rectangle) or ``math`` -- then extract the
response's final answer (``extract``), then compare:
- choice: the option letter the answer selects (``choice``); a gold letter never reaches sympy;
- number: ``numeric`` at the gold's stated precision; a gold stated in a unit against an answer in
  another unit of the same quantity is converted first (``units``); a closed form (``2\\sqrt{2}``)
  is evaluated by sympy and rounded the same way;
- text: case/punctuation-insensitive equality, or the gold word as the head of a short phrase
  (never sympy, where "yes" equals "sey");
- math: exact compact-string equality, tuples/matrices with decimal entries entry by entry, then
  symbolic equivalence (``symbolic``, math-verify with the gold wrapped in ``\\boxed{}``).
A response that answers a non-choice question with an option letter is judged by that option's
text when the question lists its options.  Boxed siblings in the final paragraph must all be right,
or together be the items of a list gold.

``grade`` runs in-process without a time limit; hostile input is fast by construction (linear scans,
size and cost guards before sympy).  ``grade_many`` (``pool``) adds the hard per-item limit.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from .choice import gold_letter, parse_options, read_choice
from .extract import MAX_ANSWER_CHARS, extract_answer, find_boxes
from .normalize import TEXT_COMMANDS, clean_answer, compact, fold_text, strip_wrappers, unwrap_command
from .numeric import Num, numbers_match, parse_number, value_as_num
from .symbolic import numeric_value, symbolic_equal
from .units import Unit, judge_units, split_unit

MAX_EXTRACTED_IN_VERDICT = 2000

MATH_WORDS = {
    "pi", "e", "i", "inf", "infty", "infinity", "oo", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln",
    "exp", "sqrt", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "mod", "gcd", "lcm", "max", "min",
    "frac", "theta", "alpha", "beta", "gamma", "delta", "lambda", "mu", "sigma", "phi", "omega", "dx", "dy",
}
_TEXT_GOLD = re.compile(r"[A-Za-z][A-Za-z'’\- ,.!?&/]{0,200}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one response: ``correct``, the ``extracted`` final answer and a ``reason``."""

    correct: bool
    extracted: str | None
    reason: str
    kind: str = ""  # the gold's kind: choice | number | text | math
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Gold:
    raw: str
    clean: str
    kind: str
    letter: str | None
    number: Num | None
    compact: str
    folded: str
    unit: Unit | None = None  # the unit a number gold is stated in (None: units are ignored)


def _is_text_gold(s: str) -> bool:
    t = unwrap_command(s, TEXT_COMMANDS).strip()
    if not _TEXT_GOLD.fullmatch(t):
        return False
    words = re.findall(r"[A-Za-z]+", t)
    return any(len(w) >= 2 and w.lower() not in MATH_WORDS for w in words)


@lru_cache(maxsize=16384)
def read_gold(gold: str) -> Gold:
    """The gold answer's kind and parsed forms (cached)."""
    g = gold.strip()
    if "\\boxed" in g or "\\fbox" in g:
        boxes = [b for b in find_boxes(g) if b.end is not None]
        if boxes:
            g = boxes[-1].content
    clean = clean_answer(g)
    letter = gold_letter(clean)
    number = None if letter else parse_number(clean)
    if letter:
        kind = "choice"
    elif number is not None:
        kind = "number"
    elif _is_text_gold(clean):
        kind = "text"
    else:
        kind = "math"
    unit = split_unit(clean)[1] if kind == "number" else None
    return Gold(gold, clean, kind, letter, number, compact(clean), fold_text(clean), unit)


@lru_cache(maxsize=1024)
def _options(question: str) -> dict[str, str]:
    return parse_options(question)


def _first_clause(a: str) -> str:
    a = unwrap_command(clean_answer(a), TEXT_COMMANDS)
    return fold_text(re.split(r"[,;:.!(]|\s(?:because|since|as)\s", a, maxsplit=1)[0])


_LABEL = re.compile(r"[A-Z]{1,4}\d{0,2}|\d{1,2}")
_NEGATION = frozenset({"not", "no", "non", "never", "neither", "nor"})


def _head_word_match(answer: str, gold: Gold) -> bool:
    """A one-word gold equals a short noun phrase whose head it is ("a red rectangle", "rectangle ABCD")."""
    if " " in gold.folded or not gold.folded:
        return False
    raw = unwrap_command(clean_answer(answer), TEXT_COMMANDS).strip().rstrip(".")
    words = raw.split()
    if not 2 <= len(words) <= 5 or any(w.lower() in _NEGATION for w in words):
        return False
    folded = [fold_text(w) for w in words]
    if folded[-1] == gold.folded:
        return True
    return folded[0] == gold.folded and all(_LABEL.fullmatch(w) for w in words[1:])


def _elements(s: str) -> tuple[str, list[str]] | None:
    """(shape, items) of a tuple ``(a, b)`` or a matrix ``\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}``."""
    t = s.strip()
    m = re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", t, re.S)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        return f"matrix{[len(r) for r in cells]}", [c for r in cells for c in r]
    if len(t) >= 2 and t[0] in "([" and t[-1] in ")]" and t.count(",") >= 1 and "{" not in t.replace("\\frac{", "").replace("}{", "").replace("\\sqrt{", ""):
        items = [x.strip() for x in t[1:-1].split(",")]
        return f"tuple{t[0]}{t[-1]}{len(items)}", items
    return None


def _elementwise(gold_clean: str, a: str) -> bool | None:
    """Tuples/matrices with decimal entries: each entry judged as a number at its stated precision."""
    if len(a) > 600 or not re.search(r"\d\.\d", a):
        return None
    ge, ae = _elements(gold_clean), _elements(a)
    if ge is None or ae is None or ge[0] != ae[0]:
        return None
    return all(judge(x, read_gold(g))[0] for g, x in zip(ge[1], ae[1]))


def is_list_gold(gold: Gold) -> bool:
    """A gold listing several items (``2, 3``, ``\\{1, 2, 3\\}``, ``2 \\pm \\sqrt{3}``)."""
    c = gold.clean
    if gold.kind != "math":
        return False
    return c.startswith("\\{") or "\\pm" in c or ("," in c and c[:1] not in "([" and "\\begin" not in c)


def judge(answer: str, gold: Gold, question: str | None = None) -> tuple[bool, str]:
    """Compare one extracted answer with a read gold: (correct, reason)."""
    a = clean_answer(answer)
    if len(a) > 200:
        a = strip_wrappers(a)  # redundant layers of hostile size: {{{...1...}}}
    if not a:
        return False, "empty answer"
    options = _options(question[-20_000:]) if question else {}
    if gold.kind == "choice":
        cr = read_choice(a, options)
        if cr.letter is None:
            return False, cr.problem or "not an option letter"
        if cr.letter == gold.letter:
            return True, "choice match"
        return False, f"choice mismatch ({cr.letter})"
    if options and len(a) <= 40:
        cr = read_choice(a, options)
        if cr.letter and cr.problem is None and cr.letter in options:
            a = options[cr.letter]  # an option letter (with or without its text): judge the option's text
        elif cr.problem and cr.problem.startswith("hedged"):
            return False, cr.problem
    if gold.compact and compact(a) == gold.compact:
        return True, "exact match"
    if gold.kind == "number":
        assert gold.number is not None
        by_unit = judge_units(a, gold.number, gold.unit)
        if by_unit is not None:
            return by_unit
        n = parse_number(a)
        if n is not None:
            ok = numbers_match(gold.number, n)
            return ok, "numeric match" if ok else "numeric mismatch"
        if not gold.number.exact:
            v = numeric_value(a)
            if v is not None:
                ok = numbers_match(gold.number, value_as_num(v, exact=True))
                return ok, "numeric match (evaluated)" if ok else "numeric mismatch (evaluated)"
        return symbolic_equal(gold.clean, a)
    if gold.kind == "text":
        fa = fold_text(a)
        if fa and fa == gold.folded:
            return True, "text match"
        if _first_clause(a) == gold.folded and gold.folded:
            return True, "text match (first clause)"
        if _head_word_match(a, gold):
            return True, "text match (head word of the phrase)"
        return False, "text mismatch"
    # math gold: a decimal approximation of a closed-form gold, stated to >= 3 significant digits
    n = parse_number(a)
    if n is not None and not n.exact and n.value is not None:
        gv = numeric_value(gold.clean, gold=True)
        if gv is not None:
            ok = numbers_match(value_as_num(gv, exact=True), n)
            if ok:
                return True, "numeric approximation of the exact answer"
    if _elementwise(gold.clean, a):
        return True, "elementwise numeric match"
    return symbolic_equal(gold.clean, a)


def _trim(s: str | None) -> str | None:
    if s is None:
        return None
    s = s.strip()
    return s if len(s) <= MAX_EXTRACTED_IN_VERDICT else s[:MAX_EXTRACTED_IN_VERDICT] + "..."


def grade(response: str, gold: str, *, question: str | None = None) -> Verdict:
    """Judge one response against its gold answer (see the module docstring)."""
    if not isinstance(response, str) or not isinstance(gold, str):
        return Verdict(False, None, "invalid input: response and gold must be strings")
    if question is not None and not isinstance(question, str):
        question = None
    g = read_gold(gold)
    if not g.clean:
        return Verdict(False, None, "empty gold answer", g.kind)
    ex = extract_answer(response)
    if ex.answer is None:
        return Verdict(False, None, ex.problem or "no final answer found", g.kind)
    if ex.problem:
        return Verdict(False, _trim(ex.answer), ex.problem, g.kind)
    if len(ex.answer) > MAX_ANSWER_CHARS:
        return Verdict(False, _trim(ex.answer), "answer too long", g.kind)
    ok, reason = judge(ex.answer, g, question)
    if ex.siblings and is_list_gold(g):
        # several boxes in the final paragraph against a list gold: together they are the answer
        listed = ", ".join([*reversed(ex.siblings), ex.answer])
        if judge(listed, g, question)[0]:
            return Verdict(True, _trim(listed), "boxed items match the listed gold", g.kind)
    if ok and ex.siblings:
        for s in ex.siblings:
            if not judge(s, g, question)[0]:
                return Verdict(False, _trim(ex.answer), "disagreeing boxed answers", g.kind)
    return Verdict(ok, _trim(ex.answer), reason, g.kind)


def grade_tuple(response: str, gold: str, question: str | None = None) -> tuple[bool, str | None, str, str]:
    """``grade`` as a plain tuple (what pool workers send back)."""
    try:
        v = grade(response, gold, question=question)
    except MemoryError:
        return False, None, "out of memory while grading", ""
    except RecursionError:
        return False, None, "input nested too deeply", ""
    except Exception as exc:  # noqa: BLE001 - a grading bug must not kill the worker
        return False, None, f"grading error: {type(exc).__name__}", ""
    return v.correct, v.extracted, v.reason, v.kind


def warmup() -> None:
    """Import and exercise every path once (pool workers call it before saying they are ready)."""
    from ._preload import WARM_ITEMS, warm

    warm()
    for response, gold in WARM_ITEMS:
        grade(response, gold)
