"""Image files -> RGB PIL images, with every failure a reasoned `ImageError`.

What `load_image` does, deliberately:
- the format is read from the file's content, not its extension (a PNG named `.jpg` loads);
- images with more than `max_pixels` pixels are refused before their data is decoded
  (`image_too_large`), and PIL's own decompression-bomb error and warning are refused too;
- the EXIF orientation is applied (`ImageOps.exif_transpose`); unreadable EXIF is ignored, and
  so are PIL's warnings about corrupt metadata, except a truncated read (`truncated_image`);
- transparency (RGBA, LA, PA, premultiplied modes, palette or single-colour transparency) is
  composited onto `background`, white by default: transparent web images (logos, icons,
  diagrams) are drawn for a white page, and LLaVA's plain `convert("RGB")` would instead
  show whatever colour the transparent pixels happen to store (often black);
- 16-bit and 32-bit grey (`I;16*`, `I`, `F`) are scaled to 8 bits by their range: values
  within 0..255 are kept, within 0..65535 divided by 257 (I;16 always), anything else
  stretched from min..max; CMYK, YCbCr, LAB, HSV, palette and 1-bit go through PIL's
  conversion (CMYK ignores any ICC profile).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 40 megapixels: an 8000 x 5000 photo. Every vision encoder victor targets sees < 1 megapixel.
MAX_IMAGE_PIXELS = 40_000_000
WHITE = (255, 255, 255)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


class ImageError(Exception):
    """An image that cannot be used; `reason` is one of skips.REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_image(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS,
               background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Open, check, decode, orient and convert to RGB. Raises ImageError, and nothing else."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("missing_image", f"{path}: {'not a file' if path.exists() else 'no such file'}")
    return decode_image(path, path, max_pixels, background)


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = MAX_IMAGE_PIXELS,
                     background: tuple[int, int, int] = WHITE) -> Image.Image:
    """`load_image` for an image stored inside the data (a shard member, a `datasets` Image
    column); `name` says where it came from in messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise ImageError("missing_image", f"{name}: no image bytes")
    return decode_image(io.BytesIO(data), name, max_pixels, background)


def decode_image(source, path, max_pixels: int | None, background: tuple[int, int, int]) -> Image.Image:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                check_size(img, max_pixels, path)
                img.load()
                rgb = to_rgb(orient(img), background)
        check_warnings(caught, path)
        return rgb
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("image_too_large", f"{path}: {err}") from None
    except UnidentifiedImageError:
        raise ImageError("corrupt_image", f"{path}: not an image format PIL can read") from None
    except OSError as err:
        if "truncated" in str(err).lower():
            raise ImageError("truncated_image", f"{path}: {err}") from None
        if isinstance(err, (PermissionError, FileNotFoundError, IsADirectoryError)):
            raise ImageError("missing_image", f"{path}: {err}") from None
        raise ImageError("corrupt_image", f"{path}: {err}") from None
    except Exception as err:  # PIL's decoders also raise SyntaxError, ValueError, struct.error, ...
        raise ImageError("corrupt_image", f"{path}: {type(err).__name__}: {err}") from None


def check_warnings(caught: list, path) -> None:
    """A decoder that warns of a truncated read returned part of an image: refuse it. Other
    warnings (corrupt EXIF or other metadata) do not change the pixels and are dropped, so that
    they do not print unattributed lines in the middle of training."""
    for w in caught:
        if "truncated" in str(w.message).lower():
            raise ImageError("truncated_image", f"{path}: {w.message}")


def check_size(img: Image.Image, max_pixels: int | None, path) -> None:
    """Refuse before decoding: the header's size is all that has been read so far."""
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError("image_too_large", f"{path}: {width}x{height} = {width * height} pixels, "
                                            f"more than the limit of {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError("corrupt_image", f"{path}: empty image ({width}x{height})")


def orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an image whose EXIF cannot be read is used as stored."""
    try:
        return ImageOps.exif_transpose(img)  # a copy, so the image outlives its file
    except Exception:
        return img.copy()


def has_alpha(img: Image.Image) -> bool:
    return "A" in img.mode or "a" in img.mode or "transparency" in img.info


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL mode -> RGB, as described in the module docstring."""
    if img.mode in HIGH_BIT_MODES:
        img = Image.fromarray(to_uint8(np.asarray(img)))  # 2-D uint8 -> mode L
    if img.mode in PREMULTIPLIED:
        img = img.convert(PREMULTIPLIED[img.mode])
    if has_alpha(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def to_uint8(values: np.ndarray) -> np.ndarray:
    """High bit-depth grey -> uint8 by the value range (see the module docstring)."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return (values.astype(np.float64) / 257).round().astype(np.uint8)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257
    elif high == low:
        scaled = np.zeros_like(values)
    else:
        scaled = (values - low) * (255 / (high - low))
    return np.clip(scaled.round(), 0, 255).astype(np.uint8)
