"""Image references, decoding and resizing.

Datasets refer to an image in one of three ways; ``resolve_image_ref`` turns each into what a
``DataRow`` holds (encoded bytes, or an absolute file path read later):

- raw bytes of an encoded image file (PNG, JPEG, ...);
- a dict ``{"bytes": ..., "path": ...}`` (HF ``datasets.Image`` storage): bytes win when present,
  otherwise the path;
- a file path (str), relative to the dataset folder unless absolute.

``fetch_images`` decodes and resizes with qwen-vl-utils' ``fetch_image`` under the configured
``min_pixels`` / ``max_pixels`` (sides become multiples of patch_size x merge_size = 28), which is
what the processor then sees unchanged.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from common.errors import CommonError

ImageLike = bytes | str | os.PathLike | Image.Image


class ImageError(CommonError, ValueError):
    """An image reference that cannot be resolved or decoded (the caller adds the row's qid)."""


def resolve_image_ref(ref: Any, base_dir: str | os.PathLike | None) -> bytes | str:
    """One dataset image reference -> encoded bytes or an absolute file path (checked to exist)."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        data = bytes(ref)
        if not data:
            raise ImageError("empty image bytes")
        return data
    if isinstance(ref, dict):
        data = ref.get("bytes")
        if data:
            return resolve_image_ref(data, base_dir)
        path = ref.get("path")
        if path:
            return resolve_image_ref(str(path), base_dir)
        raise ImageError(f"image dict has neither bytes nor path (keys: {sorted(ref)})")
    if isinstance(ref, (str, os.PathLike)):
        p = Path(ref)
        if not str(ref):
            raise ImageError("empty image path")
        if not p.is_absolute():
            if base_dir is None:
                raise ImageError(f"relative image path {str(ref)!r} but no dataset folder to resolve it against")
            p = Path(base_dir) / p
        if not p.is_file():
            raise ImageError(f"image file {str(p)!r} does not exist")
        return str(p.resolve())
    raise ImageError(f"unsupported image reference of type {type(ref).__name__}")


def _open(src: ImageLike) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(src)))
    return Image.open(Path(src))


def check_image(src: bytes | str, mode: str = "header") -> None:
    """Raise ImageError unless ``src`` is an image: ``header`` reads the header only (cheap),
    ``full`` decodes every pixel, ``none`` checks nothing."""
    if mode == "none":
        return
    try:
        with _open(src) as img:
            if mode == "full":
                img.load()
            elif img.size[0] <= 0 or img.size[1] <= 0:
                raise ImageError(f"image has size {img.size}")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None


def image_size(src: ImageLike) -> tuple[int, int]:
    """(width, height) from the header."""
    if isinstance(src, Image.Image):
        return src.size
    try:
        with _open(src) as img:
            return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None


def decode_image(src: ImageLike) -> Image.Image:
    """Decode fully to an RGB PIL image (ImageError on corrupt data)."""
    try:
        img = _open(src)
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[3])
        return bg
    return img.convert("RGB") if img.mode != "RGB" else img


def fetch_images(
    images: Sequence[ImageLike],
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
) -> list[Image.Image]:
    """Decode and resize with qwen-vl-utils (the same resize the Qwen-VL recipes use)."""
    from qwen_vl_utils import fetch_image

    out = []
    for i, src in enumerate(images):
        img = decode_image(src)
        try:
            out.append(
                fetch_image({"image": img, "min_pixels": min_pixels, "max_pixels": max_pixels}, image_patch_size=patch_size)
            )
        except (ValueError, AssertionError) as exc:  # e.g. aspect ratio > 200
            raise ImageError(f"image {i} cannot be resized (size {img.size}): {exc}") from None
    return out


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of an image (deterministic for the same pixels and Pillow version)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
