"""Judging a benchmark response with the training verifier (spec sections 5 and 7).

Every response is graded by the same rule verifier as training: last ``\\boxed{}`` (or answer tag /
answer line), then the option letter for multiple choice, math equivalence otherwise.  The
verifier sees the rendered question (with its "Choices:" list), so an answer given as an option's
text is read as that option, as in training.  ``workers >= 1`` grades in the verifier's worker
processes (``services.verifier.grade_many``, hard per-item ``timeout_s``); ``workers == 0`` grades
in this process (``services.verifier.grade``, no hard limit; the verifier is linear-time by
construction, so this is the cheap choice for small runs and tests).  Two benchmark conventions are then
applied, each only to turn a verifier "wrong" into "right" when the verifier's own extracted answer
supports it, and each recorded as the judgement's ``rule`` (both can be switched off):

- ``option_text``: a multiple-choice response whose extracted answer is exactly the text of the gold
  option (and of no other option), e.g. ``\\boxed{12}`` for "C. 12", as MathVista's and MMMU's
  scorers map answers to options;
- ``precision``: a free-form float answer with a stated ``precision`` (MathVista; MMMU's 2 decimals)
  that equals the gold (or one of its alternatives) after rounding to that many decimals, as those
  benchmarks' scorers do.

An item with ``alternatives`` (MMMU open questions that list several acceptable answers) that the
verifier finds wrong against ``gold`` is graded against each alternative in turn; a match is
recorded with rule ``alternative``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from evaluation.benchmarks.base import IMAGE_TOKEN, MULTIPLE_CHOICE, EvalItem


@dataclass(slots=True)
class Judgement:
    correct: bool
    extracted: str | None
    reason: str
    rule: str = "verifier"  # verifier | alternative | option_text | precision


def _fold(text: str) -> str:
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", text or "")
    t = re.sub(r"\s+", " ", t).strip().strip(".").strip()
    return t.lower()


def option_text_match(item: EvalItem, extracted: str | None) -> bool:
    if item.question_type != MULTIPLE_CHOICE or not item.choices or not extracted or not item.gold_text:
        return False
    key = _fold(extracted)
    if not key:
        return False
    hits = [i for i, c in enumerate(item.choices) if IMAGE_TOKEN not in c and _fold(c) == key]
    return len(hits) == 1 and item.choices[hits[0]] == item.gold_text


_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def _as_float(text: str, unit: str = "") -> float | None:
    t = (text or "").strip().replace("$", "").replace("\\%", "").replace("%", "")
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", t).strip()
    if unit and t.endswith(unit):
        t = t[: -len(unit)].strip()
    if not _NUM.fullmatch(t):
        return None
    return float(t.replace(",", ""))


def precision_match(item: EvalItem, extracted: str | None) -> bool:
    prec = item.meta.get("precision")
    if item.question_type == MULTIPLE_CHOICE or item.answer_type != "float" or prec is None or not extracted:
        return False
    try:
        digits = int(prec)
    except (TypeError, ValueError):
        return False
    pred = _as_float(extracted, item.meta.get("unit") or "")
    if pred is None:
        return False
    golds = [g for g in (_as_float(a) for a in [item.gold, *item.alternatives]) if g is not None]
    return any(round(pred, digits) == round(g, digits) for g in golds)


def _verdict_fields(v: Any) -> tuple[bool, str | None, str]:
    if isinstance(v, dict):
        return bool(v.get("correct")), v.get("extracted"), str(v.get("reason", ""))
    return bool(v.correct), v.extracted, str(getattr(v, "reason", ""))


class Judge:
    """Grades (item, response) pairs with the verifier plus the benchmark conventions above."""

    def __init__(
        self,
        *,
        option_text: bool = True,
        precision: bool = True,
        timeout_s: float = 5.0,
        workers: int | None = 1,
    ) -> None:
        self.option_text = option_text
        self.precision = precision
        self.timeout_s = timeout_s
        self.workers = workers

    def grade_raw(self, triples: Sequence[tuple[str, str, str | None]]) -> list[Any]:
        """Verifier verdicts for ``(response, gold, question)`` triples."""
        if self.workers == 0:
            from services.verifier import grade

            return [grade(r, g, question=q) for r, g, q in triples]
        from services.verifier import grade_many

        return list(grade_many(list(triples), timeout_s=self.timeout_s, workers=self.workers))

    def judge(
        self, items: Sequence[EvalItem], responses: Sequence[str], questions: Sequence[str] | None = None
    ) -> list[Judgement]:
        """Judge ``responses[i]`` for ``items[i]``; ``questions[i]`` is the rendered question text
        (default: rendered from the item, options included)."""
        from evaluation.prompts import render_question

        if len(items) != len(responses):
            raise ValueError(f"{len(items)} items but {len(responses)} responses")
        if not items:
            return []
        qs = list(questions) if questions is not None else [render_question(it) for it in items]
        verdicts = [_verdict_fields(v) for v in self.grade_raw([(r, it.gold, q) for it, r, q in zip(items, responses, qs)])]
        # items the verifier found wrong against gold: grade against their alternatives (one batch)
        alt = [(i, a) for i, it in enumerate(items) if not verdicts[i][0] for a in it.alternatives]
        alt_ok: set[int] = set()
        if alt:
            alt_verdicts = self.grade_raw([(responses[i], a, qs[i]) for i, a in alt])
            alt_ok = {i for (i, _), v in zip(alt, alt_verdicts) if _verdict_fields(v)[0]}
        out = []
        for i, (it, (correct, extracted, reason)) in enumerate(zip(items, verdicts)):
            j = Judgement(correct=correct, extracted=extracted, reason=reason)
            if i in alt_ok:
                j.correct, j.rule = True, "alternative"
            elif not correct:
                if self.option_text and option_text_match(it, extracted):
                    j.correct, j.rule = True, "option_text"
                elif self.precision and precision_match(it, extracted):
                    j.correct, j.rule = True, "precision"
            out.append(j)
        return out
