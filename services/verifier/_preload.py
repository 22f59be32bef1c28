"""Imported by the worker pool's fork server: load the grader and warm math-verify's LaTeX parser.

latex2sympy's ANTLR parser builds its prediction (DFA) cache lazily, so the first parses of each
shape of expression take 50-300 ms and later ones 1-20 ms.  Parsing a small corpus of typical
answers once, in the fork server, makes every worker -- including replacements of workers killed
for a timeout -- start warm.  Workers started without the fork server warm themselves the same way
(``warm()`` is idempotent per process).
"""

from __future__ import annotations

# Generic expressions of the shapes answers take (numbers, fractions, roots, logs, trig, polynomials,
# relations, intervals, sets, tuples, complex numbers, matrices, units).  They are deliberately not the
# gold answers of the test suite (tests/services/verifier/test_verifier_units.py checks this), so the
# benchmark measures a parser warmed on the shapes, not on the answers it is asked about.
CORPUS = (
    "19", "-12", "0.45", "3,400", "\\frac{5}{7}", "\\dfrac{2}{9}", "-\\frac{7}{3}", "\\frac{\\sqrt{5}}{3}", "4\\sqrt{7}",
    "\\sqrt[3]{5}", "\\frac{\\pi}{5}", "3\\pi t^2", "e^{3}", "e^{-2t}", "\\ln 5", "\\log_3 9", "\\log_{5}(7)",
    "\\frac{\\ln 7}{\\ln 3}", "\\exp(t)", "\\sin 2t", "\\cos^2 t", "\\tan(\\alpha)", "t^2 - 3t + 2", "(t-2)^2",
    "(a+3)(a-1)", "\\frac{m-n}{3}", "\\frac{2}{y}", "y^{-2}", "5p + 2q", "t = 4", "y = 3x - 2", "t = 1 \\text{ or } t = 5",
    "t > 7", "y \\leq 4", "-3 \\le t < 1", "[2, 5)", "(-\\infty, 1]", "(-\\infty, -2) \\cup (4, \\infty)", "\\{4, 5, 6\\}",
    "(7, 1)", "(-3, 5)", "(0.4, 0.6)", "4, 9", "2 \\pm \\sqrt{5}", "2 - 5i", "3i", "\\sqrt{-4}",
    "\\begin{pmatrix} 5 & 6 \\\\ 7 & 8 \\end{pmatrix}", "\\begin{bmatrix} 0 \\\\ 2 \\end{bmatrix}", "75^\\circ", "15^{\\circ}",
    "35\\%", "2.5 \\times 10^{-7}", "10^{9}", "3^{4}", "6!", "\\binom{6}{3}", "-\\infty", "\\text{maybe}",
    "\\frac{5\\sqrt{2}}{6}", "8\\pi", "\\sqrt{11}", "x^2 + y^2 = r^2", "\\angle PQR", "\\overline{CD}", "g(t) = t^3",
)

# (response, gold) pairs graded once by every worker before it says it is ready (every path of
# ``grade``); generic too, for the same reason.
WARM_ITEMS = (
    ("\\boxed{3,400}", "3400"),
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}"),
    ("\\boxed{\\frac{2}{5}}", "0.4"),
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
