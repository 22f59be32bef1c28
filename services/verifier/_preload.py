"""Imported by the worker pool's fork server: load the grader and warm math-verify's LaTeX parser.

latex2sympy's ANTLR parser builds its prediction (DFA) cache lazily, so the first parses of each
shape of expression take 50-300 ms and later ones 1-20 ms.  Parsing a small corpus of typical
answers once, in the fork server, makes every worker -- including replacements of workers killed
for a timeout -- start warm.  Workers started without the fork server warm themselves the same way
(``warm()`` is idempotent per process).
"""

from __future__ import annotations

CORPUS = (
    "5", "-3", "0.25", "1,200", "\\frac{1}{2}", "\\dfrac{3}{4}", "-\\frac{5}{2}", "\\frac{\\sqrt{3}}{2}", "2\\sqrt{3}",
    "\\sqrt[3]{2}", "\\pi", "\\frac{\\pi}{3}", "2\\pi r", "e^{2}", "e^{-x}", "\\ln 2", "\\log_2 8", "\\sin x", "\\cos^2 x",
    "\\tan(\\theta)", "x^2 + 2x + 1", "(x+1)^2", "(x-1)(x+2)", "\\frac{a+b}{2}", "\\frac{1}{x}", "x^{-1}", "3x - 2y",
    "x = 3", "y = 2x + 1", "x = 2 \\text{ or } x = 3", "x < 3", "x \\geq -1", "-1 < x \\le 2", "(1, 2]", "[0, \\infty)",
    "(-\\infty, 3) \\cup (5, \\infty)", "\\{1, 2, 3\\}", "(3, 4)", "(2, -1)", "2, 3", "3 + 4i", "-i", "\\sqrt{-1}",
    "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix} 1 \\\\ 0 \\end{bmatrix}", "30^\\circ",
    "45^{\\circ}", "50\\%", "1.6 \\times 10^{-19}", "10^{6}", "2^{10}", "5!", "\\binom{4}{2}", "\\infty", "\\text{Yes}",
    "\\frac{3\\sqrt{3}}{4}", "10\\pi", "\\sqrt{5}", "a^2 + b^2 = c^2", "\\angle ABC", "\\overline{AB}", "f(x) = x^2",
)

WARMED = False


def warm() -> None:
    """Parse the corpus once in this process (no-op when already done, e.g. in a forked worker)."""
    global WARMED
    if WARMED:
        return
    from .symbolic import _parse

    for s in CORPUS:
        _parse("\\boxed{" + s + "}")
    WARMED = True


warm()
