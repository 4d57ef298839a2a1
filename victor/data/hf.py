"""Hugging Face `datasets` data (local parquet, arrow, or a `save_to_disk` folder) as LLaVA samples.

A row is a LLaVA record: `conversations` (a list of `{from, value}`), optional `id`, and
`image`: a path relative to `image_root`, a `datasets` Image (its bytes travel in the row, as
in LLaVA-ReCap-CC3M's parquet files), a list of either, or null for text-only rows. Column
names can be mapped (`columns: {image: jpg, ...}` in a mixture). Rows go through the same
parsing, skips and image checks as the JSON path (`LlavaDataset`): a row that cannot be
trained on is a `Skipped` naming `source[row]`, its id and the field.

Map-style (`HFLlavaDataset`) keeps the table memory-mapped (Arrow): a few bytes per row in
memory, whatever the size. Streaming parquet is in `victor.data.stream` (row groups read in
order, split across ranks and workers like shards).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from victor.data.images import MAX_IMAGE_PIXELS, WHITE
from victor.data.llava import DataFormatError, EmbeddedImage, LlavaDataset
from victor.data.index import modality_length

DEFAULT_COLUMNS = {"id": "id", "image": "image", "conversations": "conversations"}


def parquet_files(source: str) -> list[str]:
    """The parquet files of a file, a glob, or a folder (searched recursively, sorted)."""
    if os.path.isdir(source):
        files = sorted(glob.glob(os.path.join(source, "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(source)) if any(c in source for c in "*?[") else [source]
    return [f for f in files if f.endswith(".parquet")]


def is_hf_source(source: str) -> bool:
    path = Path(source)
    if path.is_dir():
        return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or \
            (path / "state.json").is_file() or bool(parquet_files(source))
    return source.endswith((".parquet", ".arrow")) or (any(c in source for c in "*?[") and bool(parquet_files(source)))


def open_table(source: str, split: str = "train"):
    """A map-style `datasets.Dataset` for a local source, images left undecoded (bytes)."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - an optional dependency
        raise DataFormatError(f"{source}: reading Hugging Face datasets needs `pip install datasets` "
                              "(or `pip install 'victor[data]'`)") from err
    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                          or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(source)
    elif source.endswith(".arrow"):
        ds = datasets.Dataset.from_file(source)
    else:
        files = parquet_files(source)
        if not files:
            raise DataFormatError(f"{source}: no parquet or arrow files here")
        ds = datasets.load_dataset("parquet", data_files=files, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataFormatError(f"{source}: no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    return undecoded(ds)


def undecoded(ds):
    """Image columns as `{bytes, path}` dicts: decoding happens in victor's image checks."""
    import datasets

    for name, feature in ds.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(inner, datasets.Image):
            ds = ds.cast_column(name, datasets.Sequence(datasets.Image(decode=False)))
        elif isinstance(feature, list) and feature and isinstance(feature[0], datasets.Image):
            ds = ds.cast_column(name, [datasets.Image(decode=False)])
    return ds


def image_ref(value, where: str, k: int):
    """One `image` cell -> a path string, an EmbeddedImage, or the value itself (a skip when parsed)."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return EmbeddedImage(value.get("path") or f"{where}.image[{k}]", value["bytes"])
        return value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return EmbeddedImage(f"{where}.image[{k}]", bytes(value))
    return value


def row_to_record(row: dict, where: str, columns: dict[str, str] | None = None) -> dict:
    """A table row -> a LLaVA record (images as paths or EmbeddedImage)."""
    columns = {**DEFAULT_COLUMNS, **(columns or {})}
    record = {"conversations": row.get(columns["conversations"])}
    if row.get(columns["id"]) is not None:
        record["id"] = row[columns["id"]]
    image = row.get(columns["image"])
    if isinstance(image, list):
        image = [image_ref(v, where, k) for k, v in enumerate(image)] or None
    elif image is not None:
        image = image_ref(image, where, 0)
    if image is not None:
        record["image"] = image
    return record


def table_lengths(table, columns: dict[str, str] | None = None) -> np.ndarray:
    """`modality_length` of every row, vectorised with pyarrow where the schema allows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {**DEFAULT_COLUMNS, **(columns or {})}
    out = []
    for batch in table.to_batches(max_chunksize=65536):
        names = batch.schema.names
        try:
            conv = batch.column(names.index(columns["conversations"]))
            values = pc.struct_field(pc.list_flatten(conv), "value")
            counts = pc.count_substring_regex(pc.fill_null(values, ""), r"\S+")
            parents = pc.list_parent_indices(conv)
            words = np.bincount(np.asarray(parents), weights=np.asarray(counts), minlength=len(batch))
            words = np.maximum(1, words).astype(np.int32)
            if columns["image"] in names:
                image = batch.column(names.index(columns["image"]))
                has = np.asarray(pc.is_valid(image))
                if pa.types.is_list(image.type):
                    has &= np.asarray(pc.fill_null(pc.list_value_length(image), 0)) > 0
                elif pa.types.is_string(image.type):
                    has &= np.asarray(pc.fill_null(pc.utf8_length(image), 0)) > 0
            else:
                has = np.zeros(len(batch), dtype=bool)
            bad = np.asarray(pc.is_null(conv))
            out.append(np.where(bad, -1, np.where(has, words, -words)).astype(np.int32))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, KeyError, TypeError):
            rows = batch.to_pylist()
            out.append(np.array([modality_length(row_to_record(r, "", columns)) for r in rows], dtype=np.int32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


class HFRecords:
    """A `datasets.Dataset` as (where, record) by position, as `LlavaDataset.records`."""

    def __init__(self, table, label: str, columns: dict[str, str] | None = None):
        self.table, self.label, self.columns = table, label, columns
        self._lengths = None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self.table):
            raise IndexError(f"row {index} of {len(self.table)}")
        where = f"{self.label}[{index}]"
        return where, row_to_record(self.table[index], where, self.columns)

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = table_lengths(self.table.data.table if hasattr(self.table.data, "table")
                                          else self.table.data, self.columns)
            if self.table._indices is not None:  # a selected / shuffled view
                self._lengths = self._lengths[np.asarray(self.table._indices.column(0))]
        return self._lengths


class HFLlavaDataset(LlavaDataset):
    """`LlavaDataset` over a local Hugging Face dataset (see the module docstring)."""

    def __init__(self, source: str, image_root: str | os.PathLike | None = None,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS, alpha_background: tuple[int, int, int] = WHITE,
                 split: str = "train", columns: dict[str, str] | None = None):
        table = open_table(source, split)
        missing = [c for c in ("conversations",) if {**DEFAULT_COLUMNS, **(columns or {})}[c] not in table.column_names]
        if missing:
            raise DataFormatError(f"{source}: no column {({**DEFAULT_COLUMNS, **(columns or {})}[missing[0]])!r} "
                                  f"(it has {', '.join(table.column_names)}); map one with `columns:` in a mixture")
        super().__init__([], image_root, max_image_pixels, alpha_background,
                         records=HFRecords(table, source, columns))
