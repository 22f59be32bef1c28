"""Development and demo tooling: builders of the test and demo inputs (a run with a real model only
reaches it through ``ensure_model``, which returns ``model.path`` unchanged unless
``model.build_tiny_if_missing`` is set).

- ``devtools.tiny_model``: a tiny random-init Qwen2.5-VL (model + tokenizer + processor) built
  offline (``rethinker tiny-model build``; ``model.build_tiny_if_missing`` builds it on demand);
- ``devtools.synth_data``: the synthetic shapes task in ViRL39K's schema (``rethinker data synth``).

See docs/data-and-model.md.
"""
