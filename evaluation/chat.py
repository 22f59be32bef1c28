"""``rethinker chat``: one-shot inference with the training prompt (suffix and pixel limits).

    rethinker chat --model PATH_OR_NAME --image FILE [--image FILE2] "question"
                   [--max-new-tokens N] [--force-rethink] [--gold ANSWER] [--server URL]

The question gets the images first (or at its ``<image>`` placeholders, one per image), the spec's
prompt suffix ("Please reason step by step, and put your final answer within \\boxed{}.") and the
configured ``data.min_pixels`` / ``data.max_pixels``; decoding is greedy.  Prints the response and
the answer the verifier extracts from it (and, with ``--gold``, whether it is correct); with
``--force-rethink`` also the continuation after "\\n\\nWait" and its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from common.cli_args import UsageError
from evaluation.benchmarks.base import BenchmarkError, prepend_images
from evaluation.generation import Decoded, Decoder
from evaluation.prompts import EvalPrompt

# Any answer the verifier extracts is reported; the placeholder gold only makes it run the extraction.
_PROBE_GOLD = "0"


def build_chat_prompt(question: str, image_files: list[str], suffix: str) -> EvalPrompt:
    images = []
    for f in image_files:
        p = Path(f).expanduser()
        if not p.is_file():
            raise UsageError(f"--image {f!r}: no such file")
        images.append(p.read_bytes())
    try:
        text, images = prepend_images(question, images)
    except BenchmarkError as exc:
        raise UsageError(f"question: {exc}") from None
    return EvalPrompt(question=text, images=images, suffix=suffix)


def extract_and_grade(response: str, gold: str | None, question: str) -> tuple[str | None, bool | None, str]:
    """(extracted answer, correct or None without gold, verifier reason)."""
    from services.verifier import grade

    v = grade(response, gold if gold is not None else _PROBE_GOLD, question=question)
    return v.extracted, (v.correct if gold is not None else None), v.reason


async def chat_once(decoder: Decoder, prompt: EvalPrompt, *, max_new_tokens: int, trigger: str | None) -> Decoded:
    [d] = await decoder.decode([prompt], max_new_tokens=max_new_tokens, rethink_trigger=trigger)
    return d


def format_result(d: Decoded, prompt: EvalPrompt, gold: str | None) -> dict[str, Any]:
    ex, ok, reason = extract_and_grade(d.first.text, gold, prompt.question)
    out: dict[str, Any] = {
        "response": d.first.text,
        "finish_reason": d.first.finish_reason,
        "extracted": ex,
    }
    if gold is not None:
        out.update(gold=gold, correct=ok, reason=reason)
    if d.rethink is not None:
        ex2, ok2, reason2 = extract_and_grade(d.rethink.text, gold, prompt.question)
        out["rethink"] = {"continuation": d.rethink.continuation, "finish_reason": d.rethink.finish_reason, "extracted": ex2}
        if gold is not None:
            out["rethink"].update(correct=ok2, reason=reason2)
    return out


def run_chat(args: argparse.Namespace) -> int:
    """``rethinker chat`` (its arguments: ``evaluation.main.add_chat_arguments``)."""
    from evaluation.main import config_for, make_decoder

    cfg = config_for(args)
    prompt = build_chat_prompt(args.question, list(args.image or []), cfg.data.prompt_suffix)
    trigger = cfg.algorithm.rethink.eval_trigger if args.force_rethink else None
    servers = list(args.server or [])

    async def go() -> Decoded:
        decoder, engine = make_decoder(cfg, servers)
        try:
            if engine is not None:
                await engine.start()
            return await chat_once(decoder, prompt, max_new_tokens=cfg.eval.max_new_tokens, trigger=trigger)
        finally:
            await decoder.aclose()

    try:
        d = asyncio.run(go())
    except (ConnectionError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:
        from common.model_loading import ModelLoadError

        if isinstance(exc, ModelLoadError):
            raise UsageError(str(exc)) from None
        raise
    result = format_result(d, prompt, args.gold)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(result["response"])
    if result["finish_reason"] != "stop":
        print(f"[stopped at max_new_tokens={cfg.eval.max_new_tokens}]")
    print(f"\nextracted answer: {result['extracted'] if result['extracted'] is not None else '(none)'}")
    if args.gold is not None:
        print(f"gold: {args.gold} -> {'correct' if result['correct'] else 'wrong'} ({result['reason']})")
    if "rethink" in result:
        r = result["rethink"]
        print(f"\n--- after {json.dumps(trigger)} ---\n{r['continuation']}")
        print(f"\nextracted answer after rethinking: {r['extracted'] if r['extracted'] is not None else '(none)'}")
        if args.gold is not None:
            print(f"-> {'correct' if r['correct'] else 'wrong'} ({r['reason']})")
    return 0
