"""String helpers shared by the answer checkers: brace depth, LaTeX unwrapping, text folding.

Everything here runs in time linear in the input (no regex with nested or unbounded overlapping
quantifiers), because responses may be hostile: 400 KB of text, 10,000 nested braces, regex bombs.
"""

from __future__ import annotations

import re
import unicodedata


def brace_depth(text: str) -> int:
    """Maximum nesting depth of unescaped braces (and parentheses/brackets) in ``text``."""
    depth = best = 0
    for m in re.finditer(r"\\.|[{}()\[\]]", text, re.S):
        tok = m.group()
        if tok in "{([":
            depth += 1
            best = max(best, depth)
        elif tok in "})]":
            depth = max(0, depth - 1)
    return best


_UNWRAP_CACHE: dict[tuple[str, ...], re.Pattern[str]] = {}


def unwrap_command(text: str, commands: tuple[str, ...]) -> str:
    """Replace every ``\\cmd{X}`` by ``X`` for the listed commands, nested ones too, in one linear pass."""
    if "\\" not in text:
        return text
    pat = _UNWRAP_CACHE.get(commands)
    if pat is None:
        alts = "|".join(re.escape(c) for c in commands)
        pat = re.compile(r"\\(?:" + alts + r")(?![A-Za-z])\s{0,4}\{|\\.|[{}]", re.S)
        _UNWRAP_CACHE[commands] = pat
    out: list[str] = []
    stack: list[bool] = []  # True: this group's braces are dropped (an unwrapped command)
    pos = 0
    for m in pat.finditer(text):
        tok = m.group()
        if tok == "{":
            stack.append(False)
            continue
        if tok == "}":
            if stack and stack.pop():
                out.append(text[pos : m.start()])
                pos = m.end()
            continue
        if tok.endswith("{") and len(tok) > 2:
            out.append(text[pos : m.start()])
            pos = m.end()
            stack.append(True)
    out.append(text[pos:])
    return "".join(out)


TEXT_COMMANDS = ("text", "textbf", "textit", "texttt", "textrm", "mathrm", "mathbf", "mathit", "mbox", "rm", "bf", "emph", "operatorname")
BOX_COMMANDS = ("boxed", "fbox", "framebox")

_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_DELIMS = re.compile(r"\\left\b|\\right\b|\\big[lr]?\b|\\Big[lr]?\b|\\displaystyle\b|\\limits\b")


def strip_math_delimiters(s: str) -> str:
    """Remove surrounding ``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]`` and markdown bold/backticks."""
    s = s.strip()
    for _ in range(4):
        before = s
        if len(s) >= 4 and s.startswith("$$") and s.endswith("$$"):
            s = s[2:-2].strip()
        elif len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            s = s[1:-1].strip()
        if len(s) >= 4 and (s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]")):
            s = s[2:-2].strip()
        if len(s) >= 4 and s.startswith("**") and s.endswith("**"):
            s = s[2:-2].strip()
        if len(s) >= 2 and s.startswith("`") and s.endswith("`"):
            s = s.strip("`").strip()
        if s == before:
            break
    return s


def clean_answer(s: str) -> str:
    """Light canonical form of an extracted answer (still LaTeX): no delimiters, boxes or text wrappers."""
    s = strip_math_delimiters(s)
    s = unwrap_command(s, BOX_COMMANDS)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DELIMS.sub("", s)
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")
    s = s.strip()
    # "**C**", "$C$." and similar leftovers
    s = s.strip("*").strip()
    while s.endswith((".", "。")) and not s.endswith(".."):
        s = s[:-1].rstrip()
    s = strip_math_delimiters(s)
    return s


def compact(s: str) -> str:
    """A whitespace- and spacing-command-free form for exact string comparison of LaTeX answers."""
    s = clean_answer(s)
    s = unwrap_command(s, TEXT_COMMANDS)
    s = _SPACING.sub("", s)
    s = re.sub(r"(?<!\d)\s+|\s+(?!\d)", "", s)  # keep "1 2" apart from "12"
    s = s.replace("\\{", "{").replace("\\}", "}") if s.startswith("\\{") else s
    return s


_PUNCT = re.compile(r"[\s\.,!?;:'\"`*_()\[\]{}\-/]+")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


def fold_text(s: str) -> str:
    """Case/punctuation-insensitive form of a text answer: ``"YES"``, ``"Yes."``, ``"\\text{yes}"`` -> ``"yes"``."""
    s = clean_answer(s)
    s = unwrap_command(s, TEXT_COMMANDS)
    s = _SPACING.sub(" ", s)
    s = s.replace("\\", " ")
    s = unicodedata.normalize("NFKC", s).casefold()
    s = s.replace("’", "'")
    s = _PUNCT.sub(" ", s).strip()
    s = _ARTICLE.sub("", s)
    return s


_WRAP_OPENER = re.compile(r"\\(?:boxed|fbox|framebox|text|textbf|textrm|mathrm|mathbf|mbox|operatorname)[ \t]{0,4}\{|\{|\(|\\left\(")
_BRACKETS = re.compile(r"\\[{}]|\\.|[{}()]", re.S)
MAX_WRAP_LAYERS = 100_000


def strip_wrappers(s: str) -> str:
    """``s`` without redundant outer layers: ``{{{1}}}``, ``((1))``, ``\\boxed{\\text{1}}`` -> ``1``.

    One pass: each leading opener whose bracket is closed by the matching character at the very end
    is a redundant layer.  Parentheses around a comma stay (``(2, 3)`` is a tuple).  Linear time.
    """
    s = s.strip()
    layers: list[int] = []  # position of each leading opener's bracket
    pos = 0
    while len(layers) < MAX_WRAP_LAYERS:
        m = _WRAP_OPENER.match(s, pos)
        if m is None:
            break
        layers.append(m.end() - 1)
        pos = m.end()
    if not layers:
        return s
    match: dict[int, int] = {}
    stack: list[tuple[str, int]] = []
    wanted = set(layers)
    for m in _BRACKETS.finditer(s):
        tok = m.group()
        if len(tok) == 2:
            continue  # escaped brace or a command character
        if tok in "{(":
            stack.append((tok, m.start()))
        elif stack and stack[-1][0] == ("{" if tok == "}" else "("):
            _, start = stack.pop()
            if start in wanted:
                match[start] = m.start()
        else:
            return s  # unbalanced: not a wrapped value
    k = 0
    n = len(s)
    while k < len(layers) and match.get(layers[k]) == n - 1 - k:
        k += 1
    if k == 0:
        return s
    inner = s[layers[k - 1] + 1 : n - k].strip()
    if s[layers[k - 1]] == "(" and "," in inner:
        return s
    return inner
