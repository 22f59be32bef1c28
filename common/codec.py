"""Binary codec for the wire schemas (``common.schemas``): msgpack header + raw numpy buffers.

Frame layout (little-endian)::

    b"RTK" | u8 codec version | u32 header length | msgpack header | padding to 8 | array bytes ...

The header is a msgpack map ``{"_t": type name, "_v": schema version, field: value, ...}``; nested
schema objects are maps of the same form.  Each numpy array is replaced in the header by
``{"__nd__": [dtype, shape, offset, nbytes]}`` and its bytes are appended after the header, 8-byte
aligned.  ``decode`` returns arrays that are read-only views into the input buffer (no copy).

Every malformed input raises ``CodecError`` with a message saying what is wrong (truncated frame,
bad magic, unknown type, missing/unknown/ill-typed field, array out of bounds), never a bare
``KeyError`` or ``struct.error``.
"""

from __future__ import annotations

import dataclasses
import struct
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack
import numpy as np

from common.errors import CommonError
from common.schemas import SCHEMA_VERSION, SCHEMAS

MAGIC = b"RTK"
CODEC_VERSION = 1
_PREFIX = struct.Struct("<3sBI")
_ALIGN = 8
_ARRAY_TAG = "__nd__"
_ALLOWED_DTYPES = {"<i4", "<i8", "<f4", "<f2", "<f8", "|u1", "|i1", "|b1", "<u4", "<u2", "<i2"}

T = TypeVar("T")


class CodecError(CommonError, ValueError):
    """A payload that cannot be encoded or decoded; the message says why."""


# --------------------------------------------------------------------------- type checks

_FIELD_TYPES: dict[str, dict[str, Any]] = {}
_REQUIRED: dict[str, set[str]] = {}


def _schema_info(name: str) -> tuple[dict[str, Any], set[str]]:
    if name not in _FIELD_TYPES:
        cls = SCHEMAS[name]
        hints = get_type_hints(cls)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        }
        _FIELD_TYPES[name], _REQUIRED[name] = fields, required
    return _FIELD_TYPES[name], _REQUIRED[name]


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint is np.ndarray:
        return isinstance(value, np.ndarray)
    if origin in (Union, UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool, bytes):
        return isinstance(value, hint)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and hint.__name__ in SCHEMAS:
        return isinstance(value, hint)
    return True


# --------------------------------------------------------------------------- encode


def _to_plain(obj: Any, arrays: list[np.ndarray]) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if name not in SCHEMAS:
            raise CodecError(f"cannot encode {name}: not a wire schema")
        out: dict[str, Any] = {"_t": name, "_v": SCHEMA_VERSION}
        for f in dataclasses.fields(obj):
            out[f.name] = _to_plain(getattr(obj, f.name), arrays)
        return out
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in _ALLOWED_DTYPES:
            raise CodecError(f"cannot encode array of dtype {arr.dtype}")
        arrays.append(arr)
        return {_ARRAY_TAG: len(arrays) - 1}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v, arrays) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def encode(obj: Any) -> bytes:
    """Encode a schema object (or a list of them) into one frame."""
    arrays: list[np.ndarray] = []
    plain = _to_plain(obj, arrays)
    # Patch array placeholders with their layout now that all arrays are known.
    layout = []
    offset = 0
    for arr in arrays:
        layout.append([arr.dtype.str, list(arr.shape), offset, arr.nbytes])
        offset += (arr.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN

    def patch(node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1 and _ARRAY_TAG in node:
                return {_ARRAY_TAG: layout[node[_ARRAY_TAG]]}
            return {k: patch(v) for k, v in node.items()}
        if isinstance(node, list):
            return [patch(v) for v in node]
        return node

    try:
        header = msgpack.packb(patch(plain), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode: {exc}") from None
    head_len = _PREFIX.size + len(header)
    pad = (-head_len) % _ALIGN
    parts = [_PREFIX.pack(MAGIC, CODEC_VERSION, len(header)), header, b"\0" * pad]
    for arr in arrays:
        parts.append(arr.tobytes())
        parts.append(b"\0" * ((-arr.nbytes) % _ALIGN))
    return b"".join(parts)


# --------------------------------------------------------------------------- decode


def _from_plain(node: Any, body: memoryview, where: str) -> Any:
    if isinstance(node, dict):
        if _ARRAY_TAG in node and len(node) == 1:
            spec = node[_ARRAY_TAG]
            if not (isinstance(spec, list) and len(spec) == 4):
                raise CodecError(f"{where}: malformed array descriptor {spec!r}")
            dtype, shape, off, nbytes = spec
            if dtype not in _ALLOWED_DTYPES:
                raise CodecError(f"{where}: array dtype {dtype!r} not allowed")
            if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
                raise CodecError(f"{where}: bad array shape {shape!r}")
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            if not (isinstance(off, int) and isinstance(nbytes, int)) or nbytes != count * dt.itemsize or off < 0:
                raise CodecError(f"{where}: array size {nbytes!r} does not match shape {shape} of {dtype}")
            if off + nbytes > len(body):
                raise CodecError(f"{where}: truncated frame (array needs bytes {off}..{off + nbytes}, body has {len(body)})")
            arr = np.frombuffer(body, dtype=dt, count=count, offset=off).reshape(shape)
            return arr
        if "_t" in node:
            return _decode_schema(node, body, where)
        return {k: _from_plain(v, body, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_from_plain(v, body, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _decode_schema(node: dict[str, Any], body: memoryview, where: str) -> Any:
    name = node.get("_t")
    if name not in SCHEMAS:
        raise CodecError(f"{where}: unknown schema type {name!r}")
    version = node.get("_v")
    if version != SCHEMA_VERSION:
        raise CodecError(f"{where}: {name} has schema version {version!r}, this build reads {SCHEMA_VERSION}")
    types, required = _schema_info(name)
    missing = required - node.keys()
    if missing:
        raise CodecError(f"{where}: {name} is missing field(s) {sorted(missing)}")
    unknown = node.keys() - types.keys() - {"_t", "_v"}
    if unknown:
        raise CodecError(f"{where}: {name} has unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for key, raw in node.items():
        if key in ("_t", "_v"):
            continue
        value = _from_plain(raw, body, f"{where}.{key}" if where else f"{name}.{key}")
        if not _type_ok(value, types[key]):
            raise CodecError(f"{name}.{key}: expected {types[key]}, got {type(value).__name__}")
        kwargs[key] = value
    return SCHEMAS[name](**kwargs)


def decode(data: bytes | bytearray | memoryview, expect: type[T] | None = None) -> T:
    """Decode one frame; with ``expect`` the top-level object must be of that schema type."""
    view = memoryview(data)
    if view.nbytes < _PREFIX.size:
        raise CodecError(f"truncated frame: {view.nbytes} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, head_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError(f"not a rethinker frame (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != CODEC_VERSION:
        raise CodecError(f"codec version {version} not supported (this build reads {CODEC_VERSION})")
    start = _PREFIX.size
    if start + head_len > view.nbytes:
        raise CodecError(f"truncated frame: header needs {head_len} bytes, {view.nbytes - start} present")
    try:
        header = msgpack.unpackb(view[start : start + head_len], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"garbled header: {type(exc).__name__}: {exc}") from None
    body_start = start + head_len
    body_start += (-body_start) % _ALIGN
    body = view[body_start:] if body_start <= view.nbytes else view[0:0]
    obj = _from_plain(header, body, "")
    if expect is not None and not isinstance(obj, expect):
        raise CodecError(f"expected a {expect.__name__}, got {type(obj).__name__}")
    return obj  # type: ignore[return-value]
