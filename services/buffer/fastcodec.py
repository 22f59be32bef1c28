"""Fast paths of ``common.codec`` for ``Sample`` frames, the buffer's hot loop.

``encode_sample`` writes byte-for-byte the frame ``common.codec.encode`` writes for a ``Sample``
(tests check the identity) without the generic reflection; anything unusual (an array dtype the
codec refuses, a ``timings`` value that is not a plain number) falls back to ``common.codec``.
``decode_sample`` reads a ``Sample`` frame with a fixed field list and trusts the scalar types
that ``check_sample_fields`` verified when the sample was stored; a frame that does not look like
one written by ``encode_sample`` is handed to ``common.codec.decode``, which raises a ``CodecError``
saying what is wrong.  ``sample_kwargs`` returns the constructor arguments so that a batch can make
several copies of one sample (times drawn) without decoding it again.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import numpy as np

from common.codec import CODEC_VERSION, MAGIC, CodecError, decode, encode
from common.schemas import SCHEMA_VERSION, Group, PromptTask, Sample

_PREFIX = struct.Struct("<3sBI")
_ALIGN = 8
_FIELDS = tuple(f.name for f in dataclasses.fields(Sample))
_ARRAY_FIELDS = ("prompt_token_ids", "response_token_ids", "sampler_logprobs")
_ALLOWED = {"<i4", "<i8", "<f4", "<f2", "<f8", "|u1", "|i1", "|b1", "<u4", "<u2", "<i2"}
_FIELD_SET = frozenset(_FIELDS) | {"_t", "_v"}
_STR_FIELDS = ("sample_id", "group_id", "task_id", "prompt_id", "response_text", "finish_reason", "verdict_reason",
               "category", "source")
_PAD = [b"\0" * i for i in range(_ALIGN)]


def check_sample_fields(s: Sample) -> str | None:
    """The first scalar field of ``s`` whose type the codec would refuse on decode, else None."""
    for name in _STR_FIELDS:
        if not isinstance(getattr(s, name), str):
            return name
    for name in ("reward", "advantage", "created_at"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return name
    for name in ("policy_version", "times_sampled", "n_wait"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int):
            return name
    for name in ("correct", "rethought"):
        if not isinstance(getattr(s, name), bool):
            return name
    if s.extracted is not None and not isinstance(s.extracted, str):
        return "extracted"
    if not isinstance(s.timings, dict):
        return "timings"
    return None


def check_task_fields(t: PromptTask) -> str | None:
    """The first field of ``t`` whose type the codec would refuse on decode, else None."""
    for name in ("task_id", "prompt_id", "question", "answer", "prompt_suffix", "category", "source"):
        if not isinstance(getattr(t, name), str):
            return name
    for name in ("epoch", "n", "policy_version"):
        v = getattr(t, name)
        if isinstance(v, bool) or not isinstance(v, int):
            return name
    if isinstance(t.published_at, bool) or not isinstance(t.published_at, (int, float)):
        return "published_at"
    if not isinstance(t.images, list) or any(not isinstance(b, bytes) for b in t.images):
        return "images"
    if not isinstance(t.meta, dict):
        return "meta"
    return None


def encode_sample(s: Sample) -> bytes:
    """``common.codec.encode(s)`` for a Sample, faster."""
    timings = s.timings
    for v in timings.values():
        if type(v) is not float and type(v) is not int:
            return encode(s)
    arrays = []
    head: dict[str, Any] = {"_t": "Sample", "_v": SCHEMA_VERSION}
    offset = 0
    for name in _FIELDS:
        v = getattr(s, name)
        if name in _ARRAY_FIELDS:
            if not isinstance(v, np.ndarray):
                return encode(s)
            arr = np.ascontiguousarray(v)
            dt = arr.dtype.str
            if dt not in _ALLOWED:
                return encode(s)
            nbytes = arr.nbytes
            head[name] = {"__nd__": [dt, list(arr.shape), offset, nbytes]}
            arrays.append(arr)
            offset += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        elif isinstance(v, np.generic):
            return encode(s)
        else:
            head[name] = v
    try:
        header = msgpack.packb(head, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode: {exc}") from None
    parts = [_PREFIX.pack(MAGIC, CODEC_VERSION, len(header)), header, _PAD[(-(_PREFIX.size + len(header))) % _ALIGN]]
    for arr in arrays:
        parts.append(arr.data if arr.ndim else arr.tobytes())
        parts.append(_PAD[(-arr.nbytes) % _ALIGN])
    return b"".join(parts)


def sample_kwargs(data: bytes) -> dict[str, Any]:
    """Constructor arguments of the Sample in frame ``data`` (arrays are read-only views)."""
    view = memoryview(data)
    try:
        magic, version, head_len = _PREFIX.unpack_from(view, 0)
        if magic != MAGIC or version != CODEC_VERSION:
            raise ValueError
        start = _PREFIX.size
        head = msgpack.unpackb(view[start : start + head_len], raw=False)
        if type(head) is not dict or head.get("_t") != "Sample" or head.get("_v") != SCHEMA_VERSION or head.keys() != _FIELD_SET:
            raise ValueError
        body_start = start + head_len
        body_start += (-body_start) % _ALIGN
        for name in _ARRAY_FIELDS:
            dt, shape, off, nbytes = head[name]["__nd__"]
            if dt not in _ALLOWED or len(shape) != 1:
                raise ValueError
            dtype = np.dtype(dt)
            count = shape[0]
            if nbytes != count * dtype.itemsize or off < 0 or body_start + off + nbytes > len(view):
                raise ValueError
            head[name] = np.frombuffer(view, dtype=dtype, count=count, offset=body_start + off)
        del head["_t"], head["_v"]
        return head
    except (ValueError, TypeError, KeyError, IndexError, struct.error, msgpack.exceptions.ExtraData,
            msgpack.exceptions.FormatError, msgpack.exceptions.StackError):
        # not a frame this module wrote: the generic decoder says precisely what is wrong
        s = decode(data, Sample)
        return {name: getattr(s, name) for name in _FIELDS}


def decode_sample(data: bytes) -> Sample:
    return Sample(**sample_kwargs(data))


_TASK_FIELDS = frozenset(f.name for f in dataclasses.fields(PromptTask)) | {"_t", "_v"}
_GROUP_FIELDS = frozenset(f.name for f in dataclasses.fields(Group)) | {"_t", "_v"}


def task_of_group_frame(data: bytes) -> PromptTask:
    """The task of a stored group frame (a Group without samples, so no arrays)."""
    view = memoryview(data)
    try:
        magic, version, head_len = _PREFIX.unpack_from(view, 0)
        if magic != MAGIC or version != CODEC_VERSION:
            raise ValueError
        head = msgpack.unpackb(view[_PREFIX.size : _PREFIX.size + head_len], raw=False)
        if type(head) is not dict or head.get("_t") != "Group" or head.get("_v") != SCHEMA_VERSION or head.keys() != _GROUP_FIELDS:
            raise ValueError
        task = head["task"]
        if type(task) is not dict or task.get("_t") != "PromptTask" or task.get("_v") != SCHEMA_VERSION or task.keys() != _TASK_FIELDS:
            raise ValueError
        images = task["images"]
        if type(images) is not list or any(type(b) is not bytes for b in images):
            raise ValueError
        del task["_t"], task["_v"]
        return PromptTask(**task)
    except (ValueError, TypeError, KeyError, struct.error, msgpack.exceptions.ExtraData,
            msgpack.exceptions.FormatError, msgpack.exceptions.StackError):
        return decode(data, Group).task
