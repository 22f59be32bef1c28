"""Answers stated in prose: rethinking triggers, choice statements and the final statement of a value.

- ``TRIGGER``: the rethinking triggers of the grading rules (the spec's forced "Wait ..." triggers
  and natural ones: "Hmm", "Actually", "Hold on", "On second thought", "Let me double-check").
- ``choice_statement(text)``: the last "I choose C" / "I'll go with option (C)" / "I pick A".
- ``final_claim(text)``: the answer stated by the closing sentence of ``text`` -- a value after a
  copula ("So there are 7 birds.", "the area is 2 \\times 4 = 8", "it is 6", "the speed is 40
  km/h"), an assignment to one variable ("x = 3."), or a concluding equation ("So \\sin 60^\\circ =
  \\frac{\\sqrt{3}}{2}.").  Only a value that ends its clause counts (a number met inside reasoning
  does not), and questions, conditionals and hedges ("it might be 2") state nothing.

All scans look at a bounded tail of the text with bounded regex quantifiers, so hostile input stays
linear.
"""

from __future__ import annotations

import re

SENTENCE_WINDOW = 2_000  # the closing sentence is looked for in this many trailing characters
MAX_REMAINDER_WORDS = 5  # words allowed after the value in its clause ("birds in the picture")

TRIGGER = re.compile(
    r"(?i)\b(?:wait|hmm+|actually|hold on|on second thought|let me (?:re|double|check|verify)\w*|"
    r"let's (?:re|double|check|verify)\w*)\b"
)
_CHOOSE = re.compile(
    r"(?i)\bI(?:'ll|\s+will|\s+would)?\s{1,3}(?:choose|pick|select|go\s+with)\s{1,3}(?:option\s{1,3}|choice\s{1,3}|answer\s{1,3})?"
    r"(\(?[A-K]\)?|\*\*\(?[A-K]\)?\*\*)(?![A-Za-z0-9])"
)
_VERB = re.compile(
    r"(?i)(?<![A-Za-z\\])(?:is|are|was|were|equals|becomes|has|have|comes to|(?:should|must|would) be)(?![A-Za-z])|"
    r"(?<=\bit)['’]s(?![A-Za-z])|(?<=\bthat)['’]s(?![A-Za-z])|=|≈|\\approx(?![A-Za-z])"  # "so it's 8"
)
# words by which a continuation corrects the earlier work (the trigger's own "mistake" is hypothetical)
CORRECTION = re.compile(
    r"(?i)\b(?:instead|misread|missed|forgot|overlooked|miscount\w*|miscalculat\w*|should have|incorrectly|"
    r"(?<!might be a )mistake|(?<!might be an )error|typo|mixed up|confused|should be)\b|\?\s{0,3}No\b"
)
_WORD_VERB = re.compile(r"(?i)(?<![A-Za-z\\])(?:is|are|was|were|equals|becomes|has|have)(?![A-Za-z])")
_HEDGE = re.compile(r"(?i)\b(?:might|may|maybe|perhaps|probably|possibly|not sure|could be|either|guess|assum\w*|suppose|if|whether|unless)\b")
_CONCLUDE = re.compile(r"(?i)^\s*(?:so|thus|therefore|hence|finally|overall)\b[,:]?\s*")
_QUALIFIER = re.compile(r"(?i)^(?:\s*(?:approximately|approx\.?|about|roughly|around|exactly|still|now|indeed|just|equal\s+to|then|:|=|≈|\\approx))+\s*")
_IDENT = re.compile(r"(?:[A-Za-z]{1,12}|\\[A-Za-z]{2,10})(?:_\{?[A-Za-z0-9]{1,4}\}?)?(?:\([A-Za-z0-9, ]{1,10}\))?")
_FILLER_END = re.compile(r"(?i)[\s.,;:!]*(?:✓|✔|✅|☑|\u2714)?[\s.!]*$")
_NUMBER_START = re.compile(r"[-+−]?(?:\\\$|\$|€|£|¥)?[ \t]{0,2}\.?\d")
_LETTER_VALUE = re.compile(r"\(?[A-K]\)?|\*\*\(?[A-K]\)?\*\*")
_YES_NO = re.compile(r"(?i)(?:yes|no|true|false)")
_NUMBER_WORDS = re.compile(
    r"(?i)(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred)(?:[\s-](?:\w+))?"
)
_FILLER_TAIL = re.compile(r"(?i)\s+(?:in|on|at|of|for|from|to|with|altogether|overall|all|total|as)\b.*$")
_CLAUSE_CUT = re.compile(r"(?:,|;)\s+(?=[A-Za-z])|\s+(?:because|since|as|which|so|but|and so|rather than)\s+|,\s*not\b|\s+not\s+")


def strip_qualifier(value: str) -> str:
    """``value`` without a leading "still", "indeed", "approximately" ...: "still 5" -> "5"."""
    return _QUALIFIER.sub("", value, count=1).strip()


def choice_statement(text: str) -> tuple[int, str] | None:
    """(position, letter) of the last "I choose C"-style statement, or None."""
    window = text[-SENTENCE_WINDOW * 4 :]
    offset = len(text) - len(window)
    last = None
    for m in _CHOOSE.finditer(window):
        last = (offset + m.start(), m.group(1))
    return last


def last_sentence(text: str) -> tuple[int, str]:
    """(start position, text) of the closing sentence of ``text`` (decimal points do not end one)."""
    window = text[-SENTENCE_WINDOW:]
    offset = len(text) - len(window)
    body = window[: len(window) - len(window[-40:]) + _FILLER_END.search(window[-40:]).start()]
    start = -1 if offset else 0  # a sentence longer than the window is not a closing statement
    for m in re.finditer(r"[.!?](?=\s)|\n", body):
        if m.end() < len(body):
            start = m.end()
    if start < 0:
        return offset, ""
    return offset + start, body[start:].strip()


def _split_top(s: str, cut: re.Pattern[str]) -> str:
    """``s`` up to the first match of ``cut`` outside parentheses, braces and $...$."""
    depth = 0
    in_math = False
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "$":
            in_math = not in_math
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth = max(0, depth - 1)
        elif depth == 0 and not in_math and c in ",; \t":
            m = cut.match(s, i)
            if m:
                return s[:i]
        i += 1
    return s


def _value(rest: str, words: bool = False) -> str | None:
    """The answer a clause states after its verb, or None when it is not an answer by itself.
    ``words``: a short word phrase ("a cylinder") is a value too (the standing answer is a word)."""
    v = _QUALIFIER.sub("", rest, count=1).strip()
    if not v or v.lower().startswith(("not ", "no ", "wrong", "incorrect", "correct", "right")):
        return None
    clause = _split_top(v, _CLAUSE_CUT).strip().rstrip(".").strip()
    if not clause:
        return None
    if "=" in clause:  # "2 \times 4 = 8": the value is the last member of the chain
        clause = clause.rsplit("=", 1)[1].strip()
    if _LETTER_VALUE.fullmatch(clause) or _YES_NO.fullmatch(clause):
        return clause
    if _NUMBER_START.match(clause) or clause[:1] in "\\($[":
        words = clause.split(" ")
        tail = [w for w in words[1:] if re.search(r"[A-Za-z]", w) and not w.startswith("\\")]
        if len(tail) > MAX_REMAINDER_WORDS or re.search(r"\d", " ".join(tail)) or _VERB.search(" ".join(words[1:])):
            return None  # "6 and the width is 4": more statements follow, not an answer
        # keep the value and its unit, drop the rest of the noun phrase ("7 birds in the picture" -> "7 birds")
        return _FILLER_TAIL.sub("", clause).strip()
    if _NUMBER_WORDS.fullmatch(clause):
        return clause
    if words and WORD_PHRASE.fullmatch(clause) and not _EVALUATIVE.match(clause):
        return clause
    return None


# a short word answer ("a cylinder", "New York") and words that judge rather than answer ("fine")
WORD_PHRASE = re.compile(r"(?:(?:a|an|the)\s+)?[A-Za-z]{2,30}(?:[\s-][A-Za-z]{2,30}){0,2}")
_EVALUATIVE = re.compile(r"(?i)(?:correct|right|wrong|incorrect|fine|ok|okay|good|valid|invalid|consistent|the same|unchanged|true|false)\b")


_DEFINITE = re.compile(r"(?i)^\s*(?:the|its|it|this|that|[A-Za-z]\s*=)\b")
# "the correct value is 6": a statement of the value, not a verdict on the standing answer
_CORRECTED_SUBJECT = re.compile(r"(?i)^\s*the\s+(?:correct|right|actual|true)\s+[A-Za-z]")


def _committed(sent: str, verb_start: int, corrected: bool) -> bool:
    """Is the statement ending at ``verb_start`` a conclusion ("so the area is"), or, in a segment that
    corrects something (``corrected``), a plain definite statement of one clause ("The area is ...")?"""
    before = sent[:verb_start]
    clause = re.split(r"[,;:]", before)[-1]
    if _VERB.search(clause):
        return False  # "The length is 6 and the width is 4": a list of facts, not one statement
    if _CONCLUDE.match(clause) or (_CONCLUDE.match(sent) and not _VERB.search(before)):
        return True
    return (corrected or bool(_CORRECTED_SUBJECT.match(clause))) and bool(_DEFINITE.match(clause))


def final_claim(text: str, *, strict: bool = False, words: bool = False) -> tuple[int, str] | None:
    """(sentence start, answer) stated by the closing sentence of ``text`` (see the module docstring).

    ``strict`` (the text after an answer that was not retracted): only the sentence's single, final
    statement counts, and only as a conclusion ("so the angle is 30°"), or as a one-clause definite
    statement ("The area is 2 \\times 4 = 8.") when it recomputes the value or the text corrects
    something ("I added the sides instead of multiplying them", "Is that right? No, it should be 7.");
    "Each side is 2 cm, and there are 3 sides." keeps the answer.  ``words``: a short word phrase is a
    value too ("so it is a cylinder"; for a standing answer that is a word).
    """
    corrected = strict and bool(CORRECTION.search(text))
    start, sent = last_sentence(text)
    sent = sent.replace("**", "")  # markdown emphasis: "So there are **7** birds."
    if not sent or sent.endswith("?") or _HEDGE.search(sent):
        return None
    verbs = list(_VERB.finditer(sent))
    for m in reversed(verbs):
        tok = m.group()
        if not re.search(r"\w", sent[: m.start()]):
            continue  # no subject: "is 5" alone states nothing
        if tok in ("=", "≈") or tok.startswith("\\approx"):
            lhs = re.split(r"(?i)[,;:]|\b(?:is|are|so|thus|hence|therefore|then)\b", sent[: m.start()])[-1]
            lhs_core = _CONCLUDE.sub("", lhs).strip().strip("$").strip()
            concluded = bool(_CONCLUDE.match(lhs)) or bool(_CONCLUDE.match(sent))
            if not (_IDENT.fullmatch(lhs_core) or (concluded and lhs_core)):
                continue
        recomputed = "=" in sent[m.end() :]  # "The area is 6 \\times 4 = 24.": a recomputation states its result
        if strict and (not _committed(sent, m.start(), corrected or recomputed) or _WORD_VERB.search(sent, m.end())):
            continue  # after a standing answer only the sentence's single, final statement counts
        v = _value(sent[m.end() :], words)
        if v is not None:
            return start, v
    return None
