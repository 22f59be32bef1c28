"""Unit behaviour of the verifier's parts: extraction, choices, numbers, fast LaTeX reader, rewards."""

from __future__ import annotations

from fractions import Fraction

import pytest

from common.config import RewardConfig
from services.verifier import count_waits, grade, reward
from services.verifier.choice import gold_letter, parse_options, read_choice
from services.verifier.extract import extract_answer
from services.verifier.fastlatex import fast_container, fast_parse
from services.verifier.grader import Verdict, read_gold
from services.verifier.numeric import numbers_match, parse_number
from services.verifier.symbolic import _parse, fast_compare, unsafe_reason


# ----------------------------------------------------------------------------- extraction


def test_extract_last_box_with_nested_braces_and_siblings() -> None:
    e = extract_answer("First \\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}")
    assert (e.answer, e.source, e.siblings) == ("\\frac{\\sqrt{3}}{2}", "boxed", ("\\frac{1}{2}",))
    e = extract_answer("First \\boxed{1}\n\nWait, recheck: \\boxed{2}")
    assert (e.answer, e.siblings) == ("2", ())  # a rethink starts a new paragraph


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\\boxed{}", "empty \\boxed{}"),
        ("so \\boxed{12", "unterminated \\boxed (truncated answer)"),
        ("<answer>7", "unterminated <answer> tag (truncated answer)"),
        ("\\boxed{5}\n\nWait, that's wrong.", "answer retracted afterwards"),
        ("We keep computing values until the sum exceeds the bound and then we stop.", "no final answer found"),
        ("", "empty response"),
    ],
)
def test_extract_problems(text: str, problem: str) -> None:
    e = extract_answer(text)
    assert e.answer is None and e.problem == problem


def test_extract_statement_after_reconsideration_wins() -> None:
    e = extract_answer("\\boxed{5}\n\nWait, there might be a mistake. 2+4=6. The answer is 6.")
    assert (e.answer, e.source) == ("6", "answer_sentence")
    e = extract_answer("\\boxed{5}\n\nWait, does it seem right? 2+3=5. Yes, it is correct.")
    assert e.answer == "5"


# ----------------------------------------------------------------------------- choices


def test_gold_letters() -> None:
    assert [gold_letter(g) for g in ("C", "(C)", "C.", "\\text{C}", "\\boxed{C}", "K", "L", "CD", "c")] == [
        "C", "C", "C", "C", "C", "K", None, None, None
    ]


def test_read_choice_forms_and_hedges() -> None:
    for a in ("C", "(C)", "C.", "C) 55", "\\text{C}", "Option C", "**C**", "The answer is (C)", "C. 55 degrees"):
        assert read_choice(a).letter == "C", a
    for a in ("C or D", "C, D", "CD", "C/D", "(C) and (D)", "C) 55 or D) 65"):
        r = read_choice(a)
        assert r.letter is None and r.problem and "hedged" in r.problem, a


def test_parse_options_and_option_text() -> None:
    opts = parse_options("Find x.\nChoices:\n(A) 35\n(B) 45\n(C) 55\n(D) 65")
    assert opts == {"A": "35", "B": "45", "C": "55", "D": "65"}
    assert parse_options("Which? A. red B. green C. blue") == {"A": "red", "B": "green", "C": "blue"}
    assert read_choice("55", opts).letter == "C"
    assert read_choice("C. 45", opts).letter is None  # contradicts option C's text
    assert parse_options("Point A. is where we start") == {}


def test_gold_letter_is_never_sympy() -> None:
    assert read_gold("I").kind == "choice" and read_gold("E").kind == "choice"
    assert not grade("\\boxed{\\sqrt{-1}}", "I").correct
    assert not grade("\\boxed{2.718281828}", "E").correct
    assert read_gold("e").kind == "math"  # lower-case e is Euler's number
    assert grade("\\boxed{e}", "e").correct


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,200", 1200), ("1{,}200", 1200), ("1\\,200", 1200), ("1 200", 1200), ("-3", -3), ("0.25", Fraction(1, 4)),
        ("50\\%", 50), ("1.6e-19", Fraction(16, 10**20)), ("1.6 \\times 10^{-19}", Fraction(16, 10**20)),
        ("10^{-3}", Fraction(1, 1000)), ("\\frac{1}{2}", Fraction(1, 2)), ("\\frac12", Fraction(1, 2)),
        ("1\\frac{1}{2}", Fraction(3, 2)), ("3/4", Fraction(3, 4)), ("5 cm", 5), ("5\\text{ cm}^2", 5), ("30^\\circ", 30),
        ("30°", 30), ("\\$15", 15), ("x = 3", 3), ("twenty-one", 21), ("one hundred and five", 105), ("1.5 million", 1500000),
        # locale forms and a trailing modulus
        ("1.234,5", Fraction(2469, 2)), ("1.234.567", 1234567), ("€1.234,56", Fraction(123456, 100)), ("1'234", 1234),
        ("1 250,5", Fraction(2501, 2)), ("3,5", Fraction(7, 2)), ("1,2", Fraction(6, 5)), ("0,25", Fraction(1, 4)),
        ("3 \\pmod{7}", 3), ("3 \\mod 7", 3), ("4 (mod 5)", 4),
    ],
)
def test_parse_number(text: str, value) -> None:
    n = parse_number(text)
    assert n is not None and n.value == value, text


@pytest.mark.parametrize("text", ["3x", "3 or 4", "1,2,3", "2\\pi", "\\sqrt{2}", "abc", "5e", "1/2/3", "x"])
def test_not_a_plain_number(text: str) -> None:
    assert parse_number(text) is None


def test_numbers_at_the_gold_precision() -> None:
    def m(g: str, r: str) -> bool:
        gn, rn = parse_number(g), parse_number(r)
        assert gn is not None and rn is not None
        return numbers_match(gn, rn)

    assert m("3.14", "3.14159") and not m("3.14", "3.1") and not m("3.14159", "3.14")
    assert m("1.6e-19", "1.602e-19") and not m("1.6e-19", "9.1e-31") and not m("9.1e-31", "1.6e-19")
    assert m("\\frac{1}{3}", "0.333") and not m("\\frac{1}{3}", "0.3") and not m("7", "6.99")
    assert m("50\\%", "0.5") and m("0.5", "50\\%") and not m("0.5", "50")


def test_huge_numbers_compare_without_arithmetic() -> None:
    big = "9" * 100_000
    n = parse_number(big)
    assert n is not None and n.value is None and numbers_match(n, parse_number(big))
    assert not numbers_match(parse_number("5"), n)
    assert parse_number("1e999999999").value is None


# ----------------------------------------------------------------------------- symbolic helpers


@pytest.mark.parametrize(
    "latex", ["x^2 + 2x + 1", "(x+1)^2", "\\frac{\\sqrt{3}}{2}", "2\\sqrt{3}", "\\sqrt[3]{2}", "\\frac{a+b}{2}", "3x - 2y", "\\frac{\\pi}{3}"]
)
def test_fast_latex_agrees_with_math_verify(latex: str) -> None:
    fast = fast_parse(latex)
    assert fast is not None
    assert fast_compare(_parse("\\boxed{" + latex + "}")[0], fast) is True


@pytest.mark.parametrize("latex", ["1\\frac{1}{2}", "1 200", "x^23", "\\{1, 2\\}", "C", "5 cm", "(1, 2]", "e^2", "2i"])
def test_fast_latex_leaves_ambiguous_shapes_to_math_verify(latex: str) -> None:
    assert fast_parse(latex) is None


@pytest.mark.parametrize(
    "latex",
    ["2, 3", "-3, 2", "(2, 3)", "(3, 2)", "[1, 2]", "(1, 2]", "[0, 1)", "\\{1, 2, 3\\}", "(1, 2, 3)", "(1.5, -2)",
     "(\\frac{1}{3}, \\frac{2}{3})", "(-\\infty, 3)", "[0, \\infty)", "(3, 3)", "(\\sqrt{2}, 1)", "(2x, x^2, 1)"],
)
def test_fast_container_agrees_with_math_verify(latex: str) -> None:
    fast = fast_container(latex)
    slow = _parse("\\boxed{" + latex + "}")
    assert fast is not None and slow and fast == slow[0], (fast, slow)


@pytest.mark.parametrize("latex", ["(x, y)", "1,200", "2,3", "[3, 1]", "\\{a\\}", "(1, \\log 2)", "x, y \\in A"])
def test_fast_container_leaves_other_shapes_to_math_verify(latex: str) -> None:
    assert fast_container(latex) is None


@pytest.mark.parametrize(
    ("gold", "answer", "same"),
    [("(-\\infty, 3)", "x < 3", True), ("(-\\infty, 3]", "x \\le 3", True), ("(2, \\infty)", "x > 2", True),
     ("[-1, \\infty)", "x \\geq -1", True), ("(-1, 2]", "-1 < x \\le 2", True), ("(-\\infty, 3)", "x \\le 3", False),
     ("(2, \\infty)", "3 > x", False)],
)
def test_inequalities_compare_with_intervals_as_sets(gold: str, answer: str, same: bool) -> None:
    from services.verifier.symbolic import symbolic_equal

    assert symbolic_equal(gold, answer)[0] is same


@pytest.mark.parametrize(
    "latex", ["9^{9^{9}}", "2^{1000000}", "1000000!", "100!!", "(10^6)!", "\\binom{1000000}{3}", "x" * 700, "{" * 40 + "1" + "}" * 40]
)
def test_unsafe_expressions_never_reach_sympy(latex: str) -> None:
    assert unsafe_reason(latex)


# ----------------------------------------------------------------------------- rewards


def test_count_waits_whole_words_case_insensitive() -> None:
    assert count_waits("Wait, wait... WAIT! awaited waiting wait.") == 4
    assert count_waits("") == 0


def test_reward_rules() -> None:
    ok, bad = Verdict(True, "5", "x"), Verdict(False, "4", "x")
    cfg = RewardConfig()
    assert reward(ok, cfg=cfg) == 1.0 and reward(bad, cfg=cfg) == 0.0
    assert reward(ok, eos=False, cfg=cfg) == -0.1  # invalid: no EOS
    assert reward(ok, n_wait=6, cfg=cfg) == -0.1  # invalid: more than 5 waits
    assert reward(ok, n_wait=5, cfg=cfg) == 1.0
    assert reward(ok, eos=False, cfg=cfg.model_copy(update={"invalid_rule": False})) == 1.0
    shaped = cfg.model_copy(update={"shaping": True})
    assert reward(ok, n_wait=1, cfg=shaped) == pytest.approx(1.1)
    assert reward(ok, n_wait=2, cfg=shaped) == pytest.approx(1.1)
    assert reward(ok, n_wait=2, rethought=True, cfg=shaped) == 1.0
    assert reward(ok, n_wait=3, cfg=shaped) == pytest.approx(0.4)
    assert reward(ok, n_wait=5, cfg=shaped) == pytest.approx(0.0)
    assert reward(ok, n_wait=7, cfg=shaped.model_copy(update={"invalid_rule": False})) == pytest.approx(-0.1)
    assert reward(bad, n_wait=1, cfg=shaped) == 0.0
    assert reward(True) == 1.0 and reward(False) == 0.0


# ----------------------------------------------------------------------------- seeded property checks


def test_random_numbers_in_many_spellings() -> None:
    import random

    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1000, 9_999_999)
        s = f"{n:,}"
        spellings = [str(n), s, s.replace(",", "{,}"), s.replace(",", "\\,"), s.replace(",", " "), f"{n}.0", f"{n} \\text{{ m}}", f"x = {n}"]
        for sp in spellings:
            assert grade(f"So the result is \\boxed{{{sp}}}.", str(n)).correct, (n, sp)
        for wrong in (n + 1, n - 10, n * 10):
            assert not grade(f"\\boxed{{{wrong:,}}}", str(n)).correct, (n, wrong)


def test_random_fractions_decimals_and_letters() -> None:
    import random

    rng = random.Random(1)
    for _ in range(100):
        p, q = rng.randint(1, 50), rng.randint(2, 50)
        g = Fraction(p, q)
        dec = f"{float(g):.4f}"
        assert grade(f"\\boxed{{\\frac{{{p}}}{{{q}}}}}", dec).correct, (p, q, dec)  # exact answer vs 4-decimal gold
        assert grade(f"\\boxed{{{dec}}}", f"\\frac{{{p}}}{{{q}}}").correct, (p, q)  # 4 decimals of an exact gold
        assert not grade(f"\\boxed{{\\frac{{{p + q}}}{{{q}}}}}", dec).correct
        letter = rng.choice("ABCDEFGHIJK")
        other = rng.choice([c for c in "ABCDEFGHIJK" if c != letter])
        for form in (f"\\boxed{{{letter}}}", f"The answer is ({letter}).", f"Answer: {letter}", f"\\boxed{{\\text{{{letter}}}}}"):
            assert grade(form, letter).correct and not grade(form, other).correct, (form, letter, other)
        assert not grade(f"\\boxed{{{letter} or {other}}}", letter).correct


# ----------------------------------------------------------------------------- parser warm-up


def test_warm_up_corpus_holds_no_gold_answer_of_the_suite() -> None:
    from pathlib import Path

    from services.verifier._preload import CORPUS, WARM_ITEMS
    from services.verifier.casefile import load_cases
    from services.verifier.normalize import compact

    golds = {read_gold(c.gold).compact for c in load_cases(Path(__file__).with_name("cases.yaml"))}
    warmed = [*CORPUS, *(g for _, g in WARM_ITEMS), *(r for r, _ in WARM_ITEMS)]
    assert len(CORPUS) >= 40
    assert [x for x in warmed if compact(x) in golds or read_gold(x).compact in golds] == []


# ----------------------------------------------------------------------------- final statements, units, exact evaluation


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("So there are 7 birds in the picture.", "7 birds"),
        ("Wait, 5 is wrong; it is 6.", "6"),
        ("The area is 2 \\times 4 = 8.", "8"),
        ("The side is 5, so the area is 25, and 16 is wrong.", "25"),
        ("x = 3.", "3"),
        ("Therefore, the point of intersection is (2, 3).", "(2, 3)"),
        ("The mean of 2, 3, 4 and 5 is 14 / 4 = 3.5.", "3.5"),
        ("Yes, it is correct.", None),
        ("Let us check by substituting: 3(2) + 1 = 7.", None),
        ("I think the answer might be 2 but I am not sure", None),
        ("We know x + 2 = 7, hence x = 5 and we can now continue with the rest of the problem carefully.", None),
        ("Is it 6?", None),
        ("answer" + " " * 5000 + "is 5", None),
    ],
)
def test_final_claim_reads_the_closing_statement(text: str, value: str | None) -> None:
    from services.verifier.statements import final_claim

    got = final_claim(text)
    assert (got[1] if got else None) == value


def test_strict_claims_need_one_concluding_statement() -> None:
    from services.verifier.statements import choice_statement, final_claim

    assert final_claim("The length is 6 and the width is 4.", strict=True) is None
    assert final_claim("Each side is 2 cm, and there are 3 sides.", strict=True) is None
    assert final_claim("So the angle is 30°.", strict=True)[1] == "30°"
    assert choice_statement("After checking, I'll go with option (C).")[1] == "(C)"


@pytest.mark.parametrize(
    ("text", "unit"),
    [("5 m", "m"), ("500 cm", "cm"), ("120 \\text{ minutes}", "min"), ("2000 mm^2", "mm^2"), ("0.785 rad", "rad"),
     ("30^\\circ", "°"), ("5 apples", None), ("60 km/h", None), ("12", None)],
)
def test_split_unit(text: str, unit: str | None) -> None:
    from services.verifier.units import split_unit

    u = split_unit(text)[1]
    assert (u.name if u else None) == unit


@pytest.mark.parametrize(
    ("gold", "answer", "same"),
    [("3000x", "x" + "+x" * 2999, True), ("1", "\\sqrt{" * 200 + "1" + "}" * 200, True), ("2", "\\sqrt{8}", None),
     ("1", "\\frac{" + "9" * 5000 + "}{" + "9" * 5000 + "}", True), ("1", "\\frac{" + "9" * 5000 + "}{" + "9" * 4999 + "8}", False),
     ("0", "x" + "-x+x" * 1000 + "-x", True), ("x^2", "-x^2", False), ("2", "2^{100}", None)],
)
def test_exact_evaluation_of_long_expressions(gold: str, answer: str, same: bool | None) -> None:
    from services.verifier.arith import same_value

    assert same_value(gold, answer) is same


@pytest.mark.parametrize(
    ("text", "inner"),
    [("{" * 10_000 + "1" + "}" * 10_000, "1"), ("(((1)))", "1"), ("(2, 3)", "(2, 3)"), ("(1+2)(3+4)", "(1+2)(3+4)"),
     ("{(1+2)(3+4)}", "(1+2)(3+4)"), ("\\boxed{\\text{1}}", "1"), ("{1}+{2}", "{1}+{2}")],
)
def test_strip_wrappers(text: str, inner: str) -> None:
    from services.verifier.normalize import strip_wrappers

    assert strip_wrappers(text) == inner
