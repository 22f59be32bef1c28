"""Loading ViRL39K-format data from local files into typed ``DataRow``s, with the recipe's selection.

Sources (never a hub): a ``.parquet`` file; an ``.arrow`` file; a folder written by
``datasets.Dataset.save_to_disk`` (``state.json`` + arrow files, or a ``DatasetDict`` with one
sub-folder per split); a folder of parquet/arrow files (``<split>.parquet`` when it exists, else every
``*.parquet`` under ``data/`` or the folder itself, sorted).  Relative image paths resolve against
the folder holding the data file (for ViRL39K: ``images/xxx.jpg`` next to the parquet).

Selection (``DataConfig``): ``categories`` keeps the listed categories (ViRL39K names or the paper's,
case-insensitive); ``min_pass_rate < PassRate < max_pass_rate`` (both exclusive, either optional) on
``pass_rate_field``.  A pass rate of -1 (or null) means *not annotated*: such rows are kept by the
pass-rate filter when ``unannotated_pass_rate == "keep"`` (default) and dropped with ``"drop"``.

Errors are ``DataError`` naming the file and the row's qid: a missing column, a null required field,
an unknown category, a pass rate outside [0, 1] other than -1, a duplicate qid, a missing or corrupt
image (checked from the header by default; ``verify_images="full"`` decodes every pixel).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

from common.data.images import ImageError, check_image, fetch_images, resolve_image_ref
from common.data.prompts import PromptError, split_question
from common.data.schema import (
    ALL_COLUMNS,
    CATEGORIES,
    COL_ANSWER,
    COL_CATEGORY,
    COL_IMAGE,
    COL_PASS_7B,
    COL_PASS_32B,
    COL_QID,
    COL_QUESTION,
    COL_SOURCE,
    REQUIRED_COLUMNS,
    DataError,
    DataRow,
    canonical_category,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL import Image

    from common.config import DataConfig
    from common.schemas import PromptTask

VerifyMode = Literal["none", "header", "full"]


@dataclass
class LoadReport:
    """What a load kept and dropped (for logs and the CLI)."""

    source: str
    total: int = 0
    kept: int = 0
    dropped_category: int = 0
    dropped_pass_rate: int = 0
    dropped_unannotated: int = 0
    dropped_limit: int = 0
    categories: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- finding the table


def _read_arrow_file(path: Path) -> "pa.Table":
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            try:
                return pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return pa.ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable arrow file: {exc}") from None


def _read_parquet(path: Path) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file: {exc}") from None


def _concat(tables: list["pa.Table"], where: str) -> "pa.Table":
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{where}: data files have incompatible schemas: {exc}") from None


def _read_saved_dataset(folder: Path) -> "pa.Table":
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several types
        raise DataError(f"{folder}: cannot load the saved dataset: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{folder}: is a DatasetDict; give one split's folder ({', '.join(ds)})")
    return ds.with_format("arrow")[0 : len(ds)]


def read_table(path: str | os.PathLike, split: str | None = None) -> tuple["pa.Table", Path]:
    """The raw table and the folder relative image paths resolve against."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix == ".parquet":
            return _read_parquet(p), p.parent
        if p.suffix == ".arrow":
            return _read_arrow_file(p), p.parent
        raise DataError(f"{p}: unsupported data file type {p.suffix!r} (use .parquet, .arrow or a dataset folder)")
    # a folder
    if (p / "state.json").is_file():
        return _read_saved_dataset(p), p
    if (p / "dataset_dict.json").is_file():
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        chosen = split or ("train" if "train" in splits else None)
        if chosen not in splits:
            raise DataError(f"{p}: a DatasetDict with splits {splits}; choose one with split=")
        return _read_saved_dataset(p / chosen), p / chosen
    if split:
        for name in (f"{split}.parquet", f"{split}.arrow"):
            if (p / name).is_file():
                return read_table(p / name)
    for sub in (p / "data", p):
        files = sorted(sub.glob("*.parquet")) if sub.is_dir() else []
        if split:
            files = [f for f in files if f.name.startswith(split)] or files
        if files:
            return _concat([_read_parquet(f) for f in files], str(p)), p
        arrows = sorted(sub.glob("*.arrow")) if sub.is_dir() else []
        if arrows:
            return _concat([_read_arrow_file(f) for f in arrows], str(p)), p
    raise DataError(f"{p}: no parquet or arrow files and no saved dataset found")


# --------------------------------------------------------------------------- rows


def _pass_rate(value: Any, column: str, qid: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: qid {qid!r}: {column} is not a number ({value!r})") from None
    if math.isnan(v) or v == -1.0:
        return None
    if not 0.0 <= v <= 1.0:
        raise DataError(f"{where}: qid {qid!r}: {column} = {v} is outside [0, 1] (use -1 for not annotated)")
    return v


def _image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return list(value.tolist())
    return [value]  # a single reference


def parse_row(
    raw: dict[str, Any], *, base_dir: Path | None, where: str, verify_images: VerifyMode = "header", index: int = 0
) -> DataRow:
    """One raw record -> ``DataRow`` (DataError names the qid on any problem)."""
    qid = raw.get(COL_QID)
    if qid is None or (isinstance(qid, str) and not qid.strip()):
        raise DataError(f"{where}: row {index} has no qid")
    qid = str(qid)
    for col in (COL_QUESTION, COL_ANSWER, COL_CATEGORY):
        if raw.get(col) is None:
            raise DataError(f"{where}: qid {qid!r}: field {col!r} is missing (null)")
    question, answer = str(raw[COL_QUESTION]), str(raw[COL_ANSWER])
    if not answer.strip():
        raise DataError(f"{where}: qid {qid!r}: empty answer")
    category = canonical_category(str(raw[COL_CATEGORY]))
    if category is None:
        raise DataError(
            f"{where}: qid {qid!r}: unknown category {raw[COL_CATEGORY]!r}; expected one of {list(CATEGORIES)}"
        )
    refs = _image_list(raw.get(COL_IMAGE))
    images: list[bytes | str] = []
    for i, ref in enumerate(refs):
        try:
            src = resolve_image_ref(ref, base_dir)
            check_image(src, verify_images)
        except ImageError as exc:
            raise DataError(f"{where}: qid {qid!r}: image {i}: {exc}") from None
        images.append(src)
    try:
        split_question(question, len(images))
    except PromptError as exc:
        raise DataError(f"{where}: qid {qid!r}: {exc}") from None
    source = raw.get(COL_SOURCE)
    return DataRow(
        qid=qid,
        question=question,
        answer=answer,
        images=tuple(images),
        category=category,
        source="" if source is None else str(source),
        pass_rate_7b_base=_pass_rate(raw.get(COL_PASS_7B), COL_PASS_7B, qid, where),
        pass_rate_32b_trained=_pass_rate(raw.get(COL_PASS_32B), COL_PASS_32B, qid, where),
    )


def _records(table: "pa.Table", batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    cols = [c for c in ALL_COLUMNS if c in table.column_names]
    for batch in table.select(cols).to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()


def _check_columns(table: "pa.Table", where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {table.column_names}")


def _category_filter(categories: Iterable[str] | None) -> set[str] | None:
    if categories is None:
        return None
    out = set()
    for c in categories:
        canon = canonical_category(c)
        if canon is None:
            raise DataError(f"data.categories: unknown category {c!r}; expected one of {list(CATEGORIES)}")
        out.add(canon)
    return out


def load_rows(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    categories: Iterable[str] | None = None,
    min_pass_rate: float | None = None,
    max_pass_rate: float | None = None,
    pass_rate_field: str = COL_PASS_7B,
    unannotated_pass_rate: Literal["keep", "drop"] = "keep",
    verify_images: VerifyMode = "header",
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[DataRow]:
    """Read, validate and select rows (in file order).  See the module docstring for the rules."""
    if pass_rate_field not in (COL_PASS_7B, COL_PASS_32B):
        raise DataError(f"data.pass_rate_field: unknown field {pass_rate_field!r}")
    if unannotated_pass_rate not in ("keep", "drop"):
        raise DataError(f"unannotated_pass_rate must be 'keep' or 'drop', got {unannotated_pass_rate!r}")
    wanted = _category_filter(categories)
    table, base_dir = read_table(path, split)
    where = str(path)
    _check_columns(table, where)
    rep = report if report is not None else LoadReport(source=where)
    rep.source = where
    rows: list[DataRow] = []
    seen: set[str] = set()
    filtering_rate = min_pass_rate is not None or max_pass_rate is not None
    for i, raw in enumerate(_records(table)):
        rep.total += 1
        row = parse_row(raw, base_dir=base_dir, where=where, verify_images=verify_images, index=i)
        if row.qid in seen:
            raise DataError(f"{where}: duplicate qid {row.qid!r}")
        seen.add(row.qid)
        if wanted is not None and row.category not in wanted:
            rep.dropped_category += 1
            continue
        if filtering_rate:
            rate = row.pass_rate(pass_rate_field)
            if rate is None:
                if unannotated_pass_rate == "drop":
                    rep.dropped_unannotated += 1
                    continue
            elif (min_pass_rate is not None and not rate > min_pass_rate) or (
                max_pass_rate is not None and not rate < max_pass_rate
            ):
                rep.dropped_pass_rate += 1
                continue
        if limit is not None and len(rows) >= limit:
            rep.dropped_limit += 1
            continue
        rows.append(row)
        rep.categories[row.category] = rep.categories.get(row.category, 0) + 1
    rep.kept = len(rows)
    return rows


def load_split(cfg: "DataConfig", split: Literal["train", "eval"] = "train", *, report: LoadReport | None = None) -> list[DataRow]:
    """``load_rows`` with a ``DataConfig``: ``train_path`` or ``eval_path`` (eval: at most
    ``eval_max_items``, no pass-rate selection).  An unset ``eval_path`` gives no rows."""
    path = cfg.train_path if split == "train" else cfg.eval_path
    if path is None:
        return []
    is_train = split == "train"
    return load_rows(
        path,
        split=split if Path(path).is_dir() else None,
        categories=cfg.categories,
        min_pass_rate=cfg.min_pass_rate if is_train else None,
        max_pass_rate=cfg.max_pass_rate if is_train else None,
        pass_rate_field=cfg.pass_rate_field,
        unannotated_pass_rate=getattr(cfg, "unannotated_pass_rate", "keep"),
        limit=None if is_train else cfg.eval_max_items,
        report=report,
    )


# --------------------------------------------------------------------------- use


def decode_row_images(row: DataRow, *, min_pixels: int, max_pixels: int, patch_size: int = 14) -> list["Image.Image"]:
    """The row's images decoded and resized by qwen-vl-utils (DataError names the qid)."""
    try:
        return fetch_images(row.image_bytes(), min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size)
    except ImageError as exc:
        raise DataError(f"qid {row.qid!r}: {exc}") from None


def to_prompt_task(
    row: DataRow,
    *,
    task_id: str | None = None,
    epoch: int = 0,
    n: int = 8,
    prompt_suffix: str = "",
    policy_version: int = 0,
) -> "PromptTask":
    """A ``PromptTask`` for this row (``task_id`` defaults to ``"<qid>:e<epoch>"``)."""
    from common.schemas import PromptTask

    meta: dict[str, Any] = {}
    if row.pass_rate_7b_base is not None:
        meta[COL_PASS_7B] = row.pass_rate_7b_base
    if row.pass_rate_32b_trained is not None:
        meta[COL_PASS_32B] = row.pass_rate_32b_trained
    return PromptTask(
        task_id=task_id or f"{row.qid}:e{epoch}",
        prompt_id=row.qid,
        question=row.question,
        answer=row.answer,
        images=row.image_bytes(),
        prompt_suffix=prompt_suffix,
        category=row.category,
        source=row.source,
        epoch=epoch,
        n=n,
        policy_version=policy_version,
        meta=meta,
    )


def prompt_token_count(
    row: DataRow, processor, *, min_pixels: int, max_pixels: int, suffix: str = "", merge: int = 2, patch: int = 14
) -> int:
    """Tokens of the row's chat prompt (``processor`` or a tokenizer with a chat template), counting
    image tokens from the image sizes as qwen-vl-utils would resize them (no pixel decoding)."""
    from qwen_vl_utils import smart_resize

    from common.data.images import image_size
    from common.data.prompts import build_messages

    tokenizer = getattr(processor, "tokenizer", processor)
    n_image_tokens = 0
    for i, src in enumerate(row.images):
        try:
            w, h = image_size(src)
        except ImageError as exc:
            raise DataError(f"qid {row.qid!r}: image {i}: {exc}") from None
        rh, rw = smart_resize(h, w, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)
        n_image_tokens += (rh // patch) * (rw // patch) // (merge * merge)
    messages = build_messages(row.question, [None] * len(row.images), suffix)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # each image is one <|image_pad|> in the text; the processor expands it to its token count
    return len(tokenizer(text)["input_ids"]) - len(row.images) + n_image_tokens


def drop_long_prompts(rows: Sequence[DataRow], processor, cfg: "DataConfig") -> tuple[list[DataRow], list[str]]:
    """The rows whose prompt fits ``data.max_prompt_tokens``, and the qids of those dropped."""
    kept: list[DataRow] = []
    dropped: list[str] = []
    for row in rows:
        n = prompt_token_count(row, processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, suffix=cfg.prompt_suffix)
        if n <= cfg.max_prompt_tokens:
            kept.append(row)
        else:
            dropped.append(row.qid)
    return kept, dropped
