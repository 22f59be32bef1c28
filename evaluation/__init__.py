"""Benchmark evaluation of a VL-Rethinker policy (its own process: ``rethinker eval`` / ``rethinker chat``).

Layout:

- ``evaluation.benchmarks``: one loader per benchmark (MathVista, MathVerse, MathVision, MMMU-Pro,
  EMMA, ViRL39K-format sets) turning the public release's local files into ``EvalItem``s.
- ``evaluation.prompts``: the spec's prompt (question, options, suffix) and the image placeholders.
- ``evaluation.generation``: the decoding back-ends (a rollout engine or a model object in-process);
  ``evaluation.server_decoder``: running rollout servers over HTTP.
- ``evaluation.judging``: the training verifier applied to an item.
- ``evaluation.runner``: the resumable runner (progress, forced rethinking); ``evaluation.store``:
  the per-item jsonl it resumes from.
- ``evaluation.report``: per-benchmark / per-category accuracy as JSON and a markdown table.
- ``evaluation.periodic``: the learner's every-k-steps eval hook.
- ``evaluation.chat``: one-shot inference; ``evaluation.main``: the entry points (arguments and run
  functions of ``rethinker eval`` and ``rethinker chat``).
"""
