"""The markdown report sets our accuracy beside the paper's Qwen2.5-VL-7B and VL-Rethinker-7B figures."""

from __future__ import annotations

from evaluation.paper import PAPER_ACCURACY, REFERENCE_MODELS, paper_accuracy
from evaluation.report import render_markdown, summarize


def _summary(rethink: bool) -> dict:
    def recs(n_right: int, n: int) -> list[dict]:
        out = []
        for i in range(n):
            r = {"correct": i < n_right, "question_type": "multiple_choice", "extracted": "A"}
            if rethink:
                r["correct_rethink"] = i < n_right + 1
            out.append(r)
        return out

    benches = {"mathvista": summarize(recs(1, 2)), "mmmu": summarize(recs(1, 4)), "mmmu_pro:vision": summarize(recs(0, 2))}
    return {"model": "ours", "benchmarks": benches}


def _row(md: str, bench: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {bench} | ") and "|---" not in x)
    return [c.strip() for c in line.strip("|").split("|")]


def test_paper_figures_are_reference_columns():
    md = render_markdown(_summary(rethink=False))
    assert "| benchmark | ours | Qwen2.5-VL-7B (paper) | VL-Rethinker-7B (paper) |" in md
    assert _row(md, "mathvista") == ["mathvista", "50.0", "68.2", "74.9"]
    assert _row(md, "mmmu") == ["mmmu", "25.0", "54.3", "56.7"]
    assert _row(md, "mmmu_pro:vision") == ["mmmu_pro:vision", "0.0", "-", "-"]  # a variant the paper does not report


def test_paper_columns_with_forced_rethinking():
    md = render_markdown(_summary(rethink=True))
    assert "| benchmark | ours | ours + rethinking | Qwen2.5-VL-7B (paper) | VL-Rethinker-7B (paper) |" in md
    assert _row(md, "mathvista") == ["mathvista", "50.0", "100.0", "68.2", "74.9"]


def test_paper_figures_only_for_the_settings_the_paper_reports():
    assert REFERENCE_MODELS == ("Qwen2.5-VL-7B", "VL-Rethinker-7B")
    assert all(set(PAPER_ACCURACY[m]) == set(PAPER_ACCURACY["Qwen2.5-VL-7B"]) for m in PAPER_ACCURACY)
    assert paper_accuracy("Qwen2.5-VL-7B", "emma") == 21.5 and paper_accuracy("Qwen2.5-VL-7B", "emma:math") is None
    assert paper_accuracy("VL-Rethinker-7B", "virl") is None
