"""Aggregation of per-item results: accuracy per benchmark and per category, JSON and markdown.

``summarize(records)`` turns one benchmark's per-item records (the lines of its results jsonl)
into counts and accuracies, overall and per category dimension (``categories`` of each record, a
label or a list of labels per dimension; a record counts once under each of its labels).  With
forced rethinking the same figures are given after rethinking (``accuracy_rethink``), with the
flips in both directions.  ``write_report`` writes ``summary.json`` and ``summary.md`` (the
paper-style table: one row per model / setting, one column per benchmark, plus the average; then one
row per benchmark with our accuracy beside the paper's Qwen2.5-VL-7B and VL-Rethinker-7B figures,
from ``evaluation.paper``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from evaluation.paper import REFERENCE_MODELS, paper_accuracy


def _acc(correct: int, n: int) -> float | None:
    return correct / n if n else None


def _counts(records: Sequence[Mapping[str, Any]], rethink: bool) -> dict[str, Any]:
    n = len(records)
    correct = sum(1 for r in records if r.get("correct"))
    out: dict[str, Any] = {"n": n, "correct": correct, "accuracy": _acc(correct, n)}
    if rethink:
        after = sum(1 for r in records if r.get("correct_rethink"))
        out["correct_rethink"] = after
        out["accuracy_rethink"] = _acc(after, n)
    return out


def summarize(records: Iterable[Mapping[str, Any]], *, rethink: bool | None = None) -> dict[str, Any]:
    """Figures of one benchmark.  ``rethink=None`` detects it from the records."""
    recs = list(records)
    if rethink is None:
        rethink = any("correct_rethink" in r for r in recs)
    out = _counts(recs, rethink)
    n = len(recs)
    out["stopped"] = sum(1 for r in recs if r.get("finish_reason") == "stop")
    out["truncated"] = sum(1 for r in recs if r.get("finish_reason") == "length")
    out["errors"] = sum(1 for r in recs if r.get("error"))
    toks = [r["n_tokens"] for r in recs if isinstance(r.get("n_tokens"), int)]
    out["mean_response_tokens"] = sum(toks) / len(toks) if toks else None
    out["no_answer"] = sum(1 for r in recs if not r.get("extracted"))
    if rethink:
        out["wrong_to_right"] = sum(1 for r in recs if not r.get("correct") and r.get("correct_rethink"))
        out["right_to_wrong"] = sum(1 for r in recs if r.get("correct") and not r.get("correct_rethink"))
        out["rethink_triggered"] = sum(1 for r in recs if (r.get("rethink") or {}).get("triggered"))
        out["delta"] = (out["accuracy_rethink"] - out["accuracy"]) if n else None
    dims: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        cats = dict(r.get("categories") or {})
        cats.setdefault("question_type", r.get("question_type") or "")
        for dim, labels in cats.items():
            if isinstance(labels, str):
                labels = [labels]
            for label in labels or []:
                if label not in ("", None):
                    dims[dim][str(label)].append(r)
    out["categories"] = {
        dim: {label: _counts(rs, rethink) for label, rs in sorted(by.items())} for dim, by in sorted(dims.items())
    }
    return out


def overall(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Macro average (mean of benchmark accuracies, as the paper's table) and micro average."""
    accs = [s["accuracy"] for s in summaries.values() if s.get("accuracy") is not None]
    n = sum(s["n"] for s in summaries.values())
    c = sum(s["correct"] for s in summaries.values())
    out: dict[str, Any] = {
        "benchmarks": len(summaries),
        "n": n,
        "macro_accuracy": sum(accs) / len(accs) if accs else None,
        "micro_accuracy": _acc(c, n),
    }
    if summaries and all("accuracy_rethink" in s for s in summaries.values()):
        ra = [s["accuracy_rethink"] for s in summaries.values() if s.get("accuracy_rethink") is not None]
        rc = sum(s["correct_rethink"] for s in summaries.values())
        out["macro_accuracy_rethink"] = sum(ra) / len(ra) if ra else None
        out["micro_accuracy_rethink"] = _acc(rc, n)
    return out


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _paper_table(model: str, benches: Mapping[str, Mapping[str, Any]], rethink: bool) -> list[str]:
    """Our accuracy per benchmark beside the paper's figures for the reference models (evaluation.paper)."""
    cols = [model] + ([f"{model} + rethinking"] if rethink else []) + [f"{m} (paper)" for m in REFERENCE_MODELS]
    lines = ["", "| benchmark | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for b, s in benches.items():
        ours = [pct(s["accuracy"])] + ([pct(s.get("accuracy_rethink"))] if rethink else [])
        ref = [paper_accuracy(m, b) for m in REFERENCE_MODELS]
        lines.append(f"| {b} | " + " | ".join(ours + ["-" if r is None else f"{r:.1f}" for r in ref]) + " |")
    return lines


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The markdown report of ``summary.json``'s content."""
    benches: Mapping[str, Mapping[str, Any]] = summary["benchmarks"]
    names = list(benches)
    model = summary.get("model") or "model"
    rethink = bool(benches) and all("accuracy_rethink" in s for s in benches.values())
    ov = summary.get("overall") or overall(benches)
    lines = [f"# Evaluation: {model}", ""]
    settings = summary.get("settings") or {}
    if settings:
        lines.append(
            "Greedy decoding, max_new_tokens={}, forced rethinking: {}.".format(
                settings.get("max_new_tokens"), "on (trigger " + json.dumps(settings.get("trigger")) + ")" if rethink else "off"
            )
        )
        lines.append("")
    lines.append("| model | " + " | ".join(names) + " | avg |")
    lines.append("|---|" + "---:|" * (len(names) + 1))
    lines.append(
        f"| {model} | " + " | ".join(pct(benches[b]["accuracy"]) for b in names) + f" | {pct(ov.get('macro_accuracy'))} |"
    )
    if rethink:
        lines.append(
            f"| {model} + rethinking | "
            + " | ".join(pct(benches[b]["accuracy_rethink"]) for b in names)
            + f" | {pct(ov.get('macro_accuracy_rethink'))} |"
        )
    lines += _paper_table(model, benches, rethink)
    lines.append("")
    lines.append("| benchmark | items | correct | truncated | no answer | mean tokens |" + (" wrong->right | right->wrong |" if rethink else ""))
    lines.append("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if rethink else ""))
    for b in names:
        s = benches[b]
        mt = s.get("mean_response_tokens")
        row = f"| {b} | {s['n']} | {s['correct']} | {s.get('truncated', 0)} | {s.get('no_answer', 0)} | {'-' if mt is None else f'{mt:.0f}'} |"
        if rethink:
            row += f" {s.get('wrong_to_right', 0)} | {s.get('right_to_wrong', 0)} |"
        lines.append(row)
    for b in names:
        cats = benches[b].get("categories") or {}
        if not cats:
            continue
        lines += ["", f"## {b} by category", ""]
        lines.append("| dimension | category | items | accuracy |" + (" after rethinking |" if rethink else ""))
        lines.append("|---|---|---:|---:|" + ("---:|" if rethink else ""))
        for dim, by in cats.items():
            for label, c in by.items():
                row = f"| {dim} | {label} | {c['n']} | {pct(c['accuracy'])} |"
                if rethink:
                    row += f" {pct(c.get('accuracy_rethink'))} |"
                lines.append(row)
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` atomically; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "summary.json", out_dir / "summary.md"
    for path, text in ((js, json.dumps(summary, indent=2, ensure_ascii=False) + "\n"), (md, render_markdown(summary))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return js, md
