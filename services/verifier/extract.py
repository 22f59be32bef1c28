"""Final-answer extraction from a model response, the way a careful human grader reads it.

Order (spec section 5, made stricter): the last top-level ``\\boxed{...}``/``\\fbox{...}``; else the
last ``<answer>...</answer>``; else the last "Answer: ..." line or final-answer sentence ("the answer
is (C)", "B is the correct option", "I choose C"); else the final statement of the answer ("So there
are 7 birds.", ``statements.final_claim``); else the whole response when it is short enough to be an
answer by itself.  Not credited (``answer is None`` with a ``problem``): an empty box, an unterminated
box or tag (a truncated answer), an answer retracted afterwards without a new one ("Wait, that's
wrong"), and long responses whose answer only appears inside the reasoning.

The text after an answer is cut at the rethinking triggers and read from its last segment back
(``_walk_back``, grading rule 1 of docs/verifier.md): a segment that states a value replaces the
answer, one that retracts it without a value leaves no answer, one that confirms keeps the last
stated answer.  Boxes in the same final paragraph as the last box are returned as ``siblings``: the
grader credits the response only if they all agree (or together form a list gold), so ``\\boxed{C} or
\\boxed{D}`` is a hedge, unless the last box is committed to ("therefore the answer is \\boxed{D}").

All scans are linear in the response length and every regex quantifier that could overlap is
bounded, so 400 KB responses and regex-bomb strings are handled in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .normalize import strip_wrappers
from .statements import TRIGGER, WORD_PHRASE, choice_statement, final_claim, strip_qualifier

MAX_SIBLINGS = 8  # more disagreeing boxes than this in one paragraph: not credited
MAX_SIBLING_WALK = 256  # boxes looked at before the last one (a paragraph of 40,000 boxes is hostile)
MAX_ANSWER_CHARS = 20_000  # a "final answer" longer than this is not an answer
WHOLE_RESPONSE_MAX_CHARS = 80
STANCE_WINDOW = 64_000  # how far back from the end a retraction is looked for
MAX_SEGMENTS = 64  # rethinking segments walked back for a standing answer
WHOLE_RESPONSE_MAX_WORDS = 6  # longer sentences are reasoning, not an answer by themselves


@dataclass(frozen=True, slots=True)
class Extraction:
    answer: str | None
    source: str  # boxed | answer_tag | answer_line | answer_sentence | claim | whole | none
    siblings: tuple[str, ...] = ()
    problem: str | None = None  # why there is no creditable answer


_BOX = re.compile(r"\\(?:boxed|fbox|framebox)[ \t]{0,8}\{")
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox|framebox)[ \t]{0,8}\{|\\.|[{}]", re.S)
_RECONSIDER = re.compile(
    r"\b(?:wait|hmm+|actually|however|but|on second thought|let me (?:re|double|check|verify)\w*|"
    r"let's (?:re|double|check|verify)\w*|re-?check\w*|re-?examin\w*|reconsider\w*|double[- ]check\w*|mistake|wrong|incorrect|error|oops)\b",
    re.I,
)
_STANCE = re.compile(
    r"\b(?:(?P<neg>wrong|incorrect|mistaken|mistakes?|errors?|erroneous|miscalculat\w*|oops|invalid|"
    r"does ?n[o']t (?:seem|look) right|not (?:correct|right|valid|the answer)|is ?n't (?:correct|right|valid)|"
    r"answer (?:is|was) not|answer is ?n't)|"
    r"(?P<pos>correct|right|confirm\w*|indeed|consistent|checks out|verified|holds|valid|accurate|reasonable))\b",
    re.I,
)
_NEGATORS = frozenset("no not nothing without never any might may could if whether for possible possibly check".split())
_CLAUSE_BREAK = re.compile(r"[.,;:!?\n]")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
_QUESTION_AFTER = re.compile(r"[^.!?\n]{0,60}\?")
_COMMIT = re.compile(r"(?i)\b(?:answer|therefore|thus|hence|in conclusion|finally|final|I choose|I pick)\b")


def _negated(before: str) -> bool:
    """Is the stance word after ``before`` negated or hypothetical ("no mistake", "might be an error")?

    A negator among the last three words of the same clause counts ("no, I erred" does not).
    """
    parts = _CLAUSE_BREAK.split(before[-40:])
    words = parts[-1].lower().split()[-3:]
    return any(w in _NEGATORS or w.endswith("n't") for w in words)

_ANSWER_LINE = re.compile(
    r"(?im)^[ \t>#*_\-]{0,12}(?:\*\*|__)?[ \t]{0,3}(?:the[ \t]{1,3})?(?:final|correct|short)?[ \t]{0,3}answer[ \t]{0,3}(?:\*\*|__)?[ \t]{0,3}[:：][ \t]{0,3}(?:\*\*|__)?[ \t]{0,8}"
)
_ANSWER_SENTENCE = re.compile(
    r"(?i)\b(?:the[ \t]{1,3})?(?:(?:final|correct|right|best)[ \t]{1,3})?(?:answer|option|choice)"
    r"(?:[ \t]{1,3}(?:is|should[ \t]{1,3}be|must[ \t]{1,3}be|remains|would[ \t]{1,3}be|=)[ \t]{0,3}[:：]?|[ \t]{0,3}[:：])[ \t]{0,3}"
)
_ANSWER_SENTENCE_AFTER = re.compile(
    r"(?i)(?:^|[\s(*$])(\(?[A-Ka-k]\)?|\*\*\(?[A-K]\)?\*\*|\$[^$\n]{1,80}\$|[-+]?\d[\d,]{0,30}(?:\.\d{1,30})?)[ \t]{1,3}is[ \t]{1,3}the[ \t]{1,3}(?:correct|right|final|best)[ \t]{1,3}(?:answer|option|choice)\b"
)
_CONDITIONAL = re.compile(r"(?i)\b(?:if|suppose|assuming|assume|whether|unless|when|check|verify|see)\b[^.\n]{0,60}$")
_NEGATED_START = re.compile(r"(?i)^(?:not|never|unknown|unclear|undetermined|wrong)\b")
# "the answer is correct / right / consistent ...": a verdict on the answer (a stance), not an answer
_EVALUATION = re.compile(
    r"(?i)^(?:indeed |still |also |now |definitely |clearly )?(?:correct|right|wrong|incorrect|accurate|inaccurate|valid|"
    r"invalid|consistent|inconsistent|confirmed|verified|reasonable|plausible|fine|ok|okay|good|the same|unchanged|mistaken)\b"
)


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int | None  # None: unterminated
    content: str


def find_boxes(text: str) -> list[_Span]:
    """Top-level boxes in order, in one pass; an unterminated last box has ``end=None``."""
    if _BOX.search(text) is None:
        return []
    boxes: list[_Span] = []
    depth = 0
    start = content = -1
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group()
        if start < 0:
            if len(tok) > 2:  # a box opener at top level
                start, content, depth = m.start(), m.end(), 1
            continue
        if tok == "}":
            depth -= 1
            if depth == 0:
                boxes.append(_Span(start, m.end(), text[content : m.start()]))
                start = -1
        elif tok == "{" or len(tok) > 2:
            depth += 1
    if start >= 0:
        boxes.append(_Span(start, None, text[content:]))
    return boxes


def _cut_sentence(s: str) -> str:
    """The answer part of the text following an answer phrase: up to the end of its sentence/line."""
    s = s[:2000]
    nl = s.find("\n")
    if nl >= 0:
        s = s[:nl]
    # sentence end: ". " / "." at end, not a decimal point; keep balanced $...$ together
    out = []
    in_math = False
    depth = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "$":
            in_math = not in_math
        elif c in "{(":
            depth += 1
        elif c in "})":
            depth = max(0, depth - 1)
        elif not in_math and depth == 0:
            if c in ".;!?" and (i + 1 == n or s[i + 1] in " \t\"')*"):
                break
            if c == "," and s[i + 1 : i + 6].lower() in (" so t", " sinc", " beca", " whic", " as i", " not "):
                break
            if c == " " and s[i + 1 : i + 9].lower().startswith(("because", "since ", "as the ", "which ")):
                break
        out.append(c)
        i += 1
    return "".join(out).strip()


def _statements(text: str, offset: int = 0) -> list[tuple[int, str, str]]:
    """(position, answer text, source) of the last answer tag, answer line and final-answer sentence.

    Matches are walked from the end and each kind stops at its first valid one, so a response made
    of 30,000 "the answer is" phrases costs one regex pass, not 30,000 sentence cuts.
    """
    found: list[tuple[int, str, str]] = []
    lo = text.lower()
    i = lo.rfind("<answer>")
    if i >= 0:
        j = lo.find("</answer>", i)
        if j >= 0:
            found.append((offset + i, text[i + 8 : j], "answer_tag"))
        else:
            found.append((offset + i, "\x00unterminated", "answer_tag"))
    # each pattern needs a keyword: skip the regex pass over a long text without it
    has_answer = "answer" in lo
    has_sentence = has_answer or "option" in lo or "choice" in lo
    for m in reversed(list(_ANSWER_LINE.finditer(text)) if has_answer else []):
        rest = text[m.end() : m.end() + 2000]
        line = rest.split("\n", 1)[0].strip()
        if not line.strip("*_ \t"):
            # "Answer:\n C": take the next non-empty line
            nxt = [ln for ln in rest.split("\n", 3)[1:3] if ln.strip()]
            line = nxt[0].strip() if nxt else ""
        found.append((offset + m.start(), _cut_sentence(line) or line, "answer_line"))
        break
    for m in reversed(list(_ANSWER_SENTENCE.finditer(text)) if has_sentence else []):
        before = text[max(0, m.start() - 80) : m.start()]
        if _CONDITIONAL.search(before):
            continue
        raw = _cut_sentence(text[m.end() : m.end() + 2000])
        ans = strip_qualifier(raw)
        if not ans or _NEGATED_START.match(ans) or _EVALUATION.match(raw):
            continue
        found.append((offset + m.start(), ans, "answer_sentence"))
        break
    choice = choice_statement(text)
    if choice is not None:
        found.append((offset + choice[0], choice[1], "answer_sentence"))
    for m in reversed(list(_ANSWER_SENTENCE_AFTER.finditer(text)) if has_sentence else []):
        before = text[max(0, m.start() - 80) : m.start() + 1]
        if _CONDITIONAL.search(before):
            continue
        found.append((offset + m.start(1), m.group(1), "answer_sentence"))
        break
    found.sort(key=lambda t: t[0])
    return found


def _stance(tail: str) -> str | None:
    """How the text after an answer ends: "neg" (rejects it: "that's wrong"), "pos" (confirms it) or None.

    The last non-neutral stance word decides; it is looked for near the end first (growing windows)
    and only in the last ``STANCE_WINDOW`` characters, so a long tail full of stance words costs little.
    Stance words in a question ("does it seem right?") are neutral.
    """
    n = len(tail)
    for window in (4_000, STANCE_WINDOW):
        start = max(0, n - window)
        for m in reversed(list(_STANCE.finditer(tail, start))):
            kind = "neg" if m.group("neg") else "pos"
            before = tail[max(0, m.start() - 40) : m.start()]
            if _negated(before):
                # "no mistake", "might be a mistake" are neutral; "not correct" is negative
                kind = "neutral" if kind == "neg" else "neg"
            if _QUESTION_AFTER.match(tail, m.end()):
                kind = "neutral"
            if kind != "neutral":
                return kind
        if start == 0:
            break
    return None


def _trigger_starts(text: str, sentence_start: bool = False) -> list[int]:
    """Start positions of the rethinking triggers in the last ``STANCE_WINDOW`` characters of ``text``
    (optionally only those that start a sentence), at most the last ``MAX_SEGMENTS``."""
    starts: list[int] = []
    for m in TRIGGER.finditer(text, max(0, len(text) - STANCE_WINDOW)):
        if sentence_start:
            before = text[max(0, m.start() - 8) : m.start()].rstrip(" \t*_>#")
            if before and before[-1] not in ".!?\n":
                continue
        starts.append(m.start())
    return starts[-MAX_SEGMENTS:]


@dataclass(frozen=True, slots=True)
class _Walk:
    outcome: str  # claim | retracted | standing
    pos: int = 0
    answer: str = ""


def _walk_back(text: str, starts: list[int], standing: str, *, head_claims: bool) -> _Walk:
    """Read rethinking segments from the last one back (grading rule 1).

    A segment that states a value decides (strictly -- a conclusion or a one-clause statement --
    unless it retracts the standing answer); a retracting segment without a value leaves no answer;
    a confirming one keeps the answer standing before it, so retractions before it no longer count;
    neutral segments are skipped.  ``head_claims``: the text before the first trigger may state the
    answer too (responses without a box).  A stated value must have the standing answer's form (a
    number does not replace an option letter).
    """
    end = len(text)
    confirmed = False
    word = _TEXT_WRAP.sub(r"\1", standing).strip()
    words = bool(WORD_PHRASE.fullmatch(word)) and word.lower() not in ("yes", "no", "true", "false")
    for st in reversed(starts):
        seg = text[st:end]
        stance = _stance(seg)
        claim = final_claim(seg, strict=stance != "neg", words=words)
        if claim is not None and not (_LETTER.fullmatch(standing) and not _LETTER.fullmatch(claim[1])):
            return _Walk("claim", st + claim[0], claim[1].strip())
        if stance == "neg" and not confirmed:
            return _Walk("retracted", st)
        confirmed = confirmed or stance == "pos"
        end = st
    head = text[:end]
    if head_claims:
        claim = final_claim(head)
        if claim is not None:
            return _Walk("claim", claim[0], claim[1].strip())
    elif not confirmed:
        # no trigger: a later sentence may still reject the answer ("\\boxed{5}. That's wrong."), the
        # answer's own sentence does not ("\\boxed{5} cm, because the other options are wrong.")
        nxt = _SENTENCE_END.search(head)
        rest = head[nxt.end() :] if nxt else ""
        marker = _RECONSIDER.search(rest)
        if marker is not None and _stance(rest[marker.start() :]) == "neg":
            return _Walk("retracted", nxt.end() + marker.start() if nxt else 0)
    return _Walk("standing")


_LETTER = re.compile(r"\s*\(?[A-Ka-k]\)?\s*\.?\s*")
_TEXT_WRAP = re.compile(r"^\s*\\(?:text|mathrm|textrm|mbox)\s*\{([^{}]*)\}\s*$")


def _after_answer(tail: str, tail_offset: int, standing: str = "") -> Extraction | None:
    """What the text after an answer does to it: restate a new one, retract it, or nothing (None).

    Explicit statements (answer tag, line or sentence) after a reconsideration marker and values
    stated by rethinking segments (``_walk_back``) replace the answer, the latest one winning; a
    retraction after the last of them leaves no answer.
    """
    marker = _RECONSIDER.search(tail)
    if marker is None:
        return None
    later = [s for s in _statements(tail[marker.start() :], tail_offset + marker.start())]
    walk = _walk_back(tail, _trigger_starts(tail), standing, head_claims=False)
    if walk.outcome == "claim":
        # an explicit statement in the same closing sentence ("The answer is 6.") is the one reported
        later.append((tail_offset + walk.pos, walk.answer, "claim"))
        later.sort(key=lambda t: (t[0], t[2] != "claim"))
    if later and not (walk.outcome == "retracted" and tail_offset + walk.pos > later[-1][0]):
        pos, ans, source = later[-1]
        if ans == "\x00unterminated":
            return Extraction(None, source, problem="unterminated <answer> tag")
        return Extraction(ans, source)
    if walk.outcome == "retracted":
        return Extraction(None, "none", problem="answer retracted afterwards")
    return None


def _same_paragraph(between: str) -> bool:
    return "\n\n" not in between and _RECONSIDER.search(between) is None


def _claim_path(text: str) -> Extraction | None:
    """A response without box, tag, answer line or answer sentence: the final statement counts,
    read segment by segment from the last rethinking trigger back (``_walk_back``)."""
    walk = _walk_back(text, _trigger_starts(text, sentence_start=True), "", head_claims=True)
    if walk.outcome == "claim":
        return Extraction(walk.answer, "claim") if walk.answer else None
    if walk.outcome == "retracted":
        return Extraction(None, "none", problem="answer retracted afterwards")
    return None


def extract_answer(text: str) -> Extraction:
    """The final answer of ``text`` (see the module docstring for the rules)."""
    boxes = find_boxes(text)
    if boxes:
        last = boxes[-1]
        if last.end is None:
            return Extraction(None, "boxed", problem="unterminated \\boxed (truncated answer)")
        after = _after_answer(text[last.end :], last.end, last.content)
        if after is not None:
            return after
        content = last.content.strip()
        if not content:
            return Extraction(None, "boxed", problem="empty \\boxed{}")
        if len(content) > MAX_ANSWER_CHARS:
            content = strip_wrappers(content)  # 1 inside 10,000 braces is still 1
        if len(content) > MAX_ANSWER_CHARS:
            return Extraction(content[:MAX_ANSWER_CHARS], "boxed", problem="answer too long")
        siblings: list[str] = []
        nxt = last
        for box in reversed(boxes[-MAX_SIBLING_WALK:-1]):
            between = text[box.end : nxt.start]
            if not _same_paragraph(between) or (nxt is last and _COMMIT.search(between[-200:])):
                break  # another paragraph, or the last box is committed to ("therefore the answer is \boxed{B}")
            c = box.content.strip()
            if c and c != content and c not in siblings:
                siblings.append(c)
                if len(siblings) > MAX_SIBLINGS:
                    return Extraction(content, "boxed", problem="too many boxed answers")
            nxt = box
        return Extraction(content, "boxed", tuple(siblings))

    stmts = _statements(text)
    if stmts:
        pos, ans, source = stmts[-1]
        if ans == "\x00unterminated":
            # a complete earlier statement does not rescue a truncated final answer tag
            return Extraction(None, source, problem="unterminated <answer> tag (truncated answer)")
        # the end of this statement's line: anything after it may retract it
        line_end = text.find("\n", pos)
        if source == "answer_tag":
            line_end = text.lower().find("</answer>", pos) + len("</answer>")
        if line_end >= 0:
            after = _after_answer(text[line_end:], line_end, ans)
            if after is not None:
                return after
        ans = ans.strip()
        if not ans:
            return Extraction(None, source, problem="empty answer")
        if len(ans) > MAX_ANSWER_CHARS:
            return Extraction(ans[:MAX_ANSWER_CHARS], source, problem="answer too long")
        return Extraction(ans, source)

    claimed = _claim_path(text)
    if claimed is not None:
        return claimed
    whole = text.strip()
    if not whole:
        return Extraction(None, "none", problem="empty response")
    if len(whole) <= WHOLE_RESPONSE_MAX_CHARS and "\n" not in whole and len(whole.split()) <= WHOLE_RESPONSE_MAX_WORDS:
        return Extraction(whole, "whole")
    return Extraction(None, "none", problem="no final answer found")
