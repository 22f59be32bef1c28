"""ViRL39K-format data: the row schema, local loading and selection, prompts, images.

- ``common.data.schema``: column names, the eight categories, ``DataRow``, ``DataError``;
- ``common.data.loader``: ``load_rows`` / ``load_split`` (parquet, arrow, dataset folders),
  ``to_prompt_task``, ``decode_row_images``, ``drop_long_prompts``;
- ``common.data.prompts``: ``<image>`` placeholders -> Qwen-VL chat messages;
- ``common.data.images``: image references (bytes / HF dicts / paths), decoding, qwen-vl-utils resize;

The synthetic set in this schema (``rethinker data synth``) is ``devtools.synth_data``.  See
docs/data-and-model.md.
"""

from common.data.schema import CATEGORIES, DataError, DataRow

__all__ = ["CATEGORIES", "DataError", "DataRow"]
