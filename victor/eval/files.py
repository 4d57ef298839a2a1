"""Reading benchmark files: JSON/JSONL/TSV/CSV/parquet rows, stored images, image roots, errors.

Every reader reports a malformed file with :class:`BenchmarkFormatError` built by
:func:`format_error`, which names the file, the place in it and the expected format.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from PIL import Image

__all__ = [
    "BenchmarkFormatError",
    "default_root",
    "file_and_image_root",
    "format_error",
    "image_field",
    "is_missing",
    "iter_jsonl",
    "open_base64",
    "read_delimited",
    "read_json",
    "read_jsonl",
    "read_table",
    "require",
    "resolve",
    "text_or_empty",
]


class BenchmarkFormatError(ValueError):
    """A file is not in the format the benchmark reader expects."""


def format_error(path: Any, where: str, what: str, fmt: str) -> BenchmarkFormatError:
    return BenchmarkFormatError(f"{path}: {where}: {what} (is this really a {fmt} file?)")


def require(record: Mapping, fields: Iterable[str], path: Any, where: str, fmt: str) -> None:
    """Raise unless ``record`` is a mapping holding every one of ``fields``."""
    if not isinstance(record, Mapping):
        raise format_error(path, where, f"expected an object, got {type(record).__name__}", fmt)
    for f in fields:
        if f not in record:
            raise format_error(path, where, f"missing field '{f}'", fmt)


def is_missing(value: Any) -> bool:
    """pandas writes empty cells as NaN; LLaVA ``is_none`` also treats 'nan'/'none' as missing."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def text_or_empty(value: Any) -> str:
    return "" if is_missing(value) else str(value)


def read_json(path: Path, fmt: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise format_error(path, f"line {e.lineno}", f"not valid JSON ({e.msg})", fmt) from None


def iter_jsonl(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-empty line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise format_error(path, f"line {lineno}", f"not valid JSON ({e.msg})", fmt) from None
            yield lineno, value


def read_jsonl(path: Path, fmt: str) -> list[dict]:
    """The objects of a JSON-lines file, one per non-empty line."""
    rows = []
    for lineno, value in iter_jsonl(path, fmt):
        if not isinstance(value, dict):
            raise format_error(path, f"line {lineno}", "expected a JSON object per line", fmt)
        rows.append(value)
    return rows


def read_delimited(path: Path, fmt: str, required: Iterable[str] = ()) -> list[dict]:
    """TSV/CSV as written by pandas (``to_csv(sep='\\t')``): quoted fields may hold newlines.

    ``required`` columns are checked against the header row."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed the 128 KiB default
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise format_error(path, "line 1", "empty file, expected a header row", fmt)
        for column in required:
            if column not in header:
                raise format_error(path, "header (line 1)", f"missing column '{column}'", fmt)
        rows = []
        for lineno, cells in enumerate(reader, 2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise format_error(path, f"row {lineno - 1}", f"{len(cells)} cells for {len(header)} header columns", fmt)
            rows.append(dict(zip(header, cells)))
    return rows


def read_table(path: Path, fmt: str) -> list[dict]:
    """Records of a .tsv/.csv/.jsonl/.json (list of objects)/.parquet (needs pyarrow) file."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return read_delimited(path, fmt)
    if suffix == ".jsonl":
        return read_jsonl(path, fmt)
    if suffix == ".json":
        data = read_json(path, fmt)
        if not isinstance(data, list):
            raise format_error(path, "top level", "expected a JSON list of records", fmt)
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional dependency
        except ImportError:
            raise format_error(path, "file", "reading .parquet needs pyarrow; export to JSONL/TSV instead", fmt) from None
        return pq.read_table(path).to_pylist()
    raise format_error(path, "file name", f"unsupported extension '{suffix}' (use .tsv, .csv, .jsonl, .json)", fmt)


_B64_RE = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_B64_IMAGE_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")  # PNG, JPEG, GIF, WebP


def open_base64(data: str, path: Any, where: str, fmt: str) -> Image.Image:
    """A base64-encoded image, opened lazily (pixels are decoded when first used)."""
    try:
        raw = base64.b64decode(data)
        return Image.open(io.BytesIO(raw))
    except (binascii.Error, ValueError, OSError) as e:
        raise format_error(path, where, f"field 'image' is not a base64-encoded image ({e})", fmt) from None


def image_field(value: Any, image_root: Path | None, path: Any, where: str, fmt: str):
    """Decode the usual ways an image is stored: base64 string, HF export dict, relative path."""
    if is_missing(value):
        return None
    if isinstance(value, dict):  # Hugging Face `Image` feature exported to JSON
        if value.get("bytes"):
            raw = value["bytes"]
            if isinstance(raw, list):
                raw = bytes(raw)
            if isinstance(raw, bytes):
                return Image.open(io.BytesIO(raw))
            return open_base64(raw, path, where, fmt)
        value = value.get("path")
        if is_missing(value):
            return None
    s = str(value)
    if "." not in s and _B64_RE.match(s) and (len(s) >= 128 or s.startswith(_B64_IMAGE_MAGIC)):
        return open_base64(s, path, where, fmt)
    return resolve(s, image_root)


def resolve(name: str, image_root: Path | None) -> str:
    return str(Path(image_root) / name) if image_root is not None else name


def default_root(path: Path, image_root: Any) -> Path:
    """Relative image paths resolve against ``image_root`` or else the data file's folder."""
    if image_root is not None:
        return Path(image_root)
    return path if path.is_dir() else path.parent


def file_and_image_root(path, default_name: str, image_root) -> tuple[Path, Path]:
    """A release directory or its question file; images default to ``<dir>/images``."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if image_root is None and (path.parent / "images").is_dir():
        image_root = path.parent / "images"
    return path, default_root(path, image_root)
