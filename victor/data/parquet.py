"""Parquet files (a Hugging Face dataset's `data/*.parquet`) streamed by row group, with pyarrow.

`kind: parquet-stream` in a mixture. The row groups are the stream's parts; a reader keeps the
row group it is in and reads rows from it (`victor.data.stream` orders reads so that a worker
stays in one row group for a while). Rows become LLaVA records as in `victor.data.hf`. The
modality lengths are computed once per file set (one pass over the `conversations` and
`image` columns) and cached beside the record index (`victor.data.index` folders).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from victor.data.hf import parquet_files, row_to_record, table_lengths
from victor.data.llava import DataFormatError


class ParquetRecords:
    """Parquet rows as (where, record) by position, as `LlavaDataset.records`."""

    def __init__(self, source: str, columns: dict[str, str] | None = None):
        import pyarrow.parquet as pq

        self.source, self.columns = source, columns
        self.files = parquet_files(source)
        if not self.files:
            raise DataFormatError(f"{source}: no parquet files")
        groups = []  # (file, row group, rows)
        for k, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            groups += [(k, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.groups = groups
        self.counts = np.asarray([n for _, _, n in groups], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.counts)])
        self._cache: tuple[int, object] | None = None
        self._lengths = None

    def __len__(self) -> int:
        return int(self.cum[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    @property
    def parts(self) -> np.ndarray:
        return self.counts

    def row_group(self, g: int):
        if self._cache is None or self._cache[0] != g:
            import pyarrow.parquet as pq

            k, group, _ = self.groups[g]
            self._cache = (g, pq.ParquetFile(self.files[k]).read_row_group(group))
        return self._cache[1]

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        g = int(np.searchsorted(self.cum, index, side="right")) - 1
        row = self.row_group(g).slice(index - int(self.cum[g]), 1).to_pylist()[0]
        k, group, _ = self.groups[g]
        where = f"{self.files[k]}[row group {group}, row {index - int(self.cum[g])}]"
        return where, row_to_record(row, where, self.columns)

    def cache_path(self) -> Path:
        from victor.data.index import _cache_root

        key = [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in self.files]
        digest = hashlib.sha1(json.dumps([key, self.columns]).encode()).hexdigest()[:16]
        return _cache_root() / f"parquet-lengths-{digest}.npy"

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            path = self.cache_path()
            if path.is_file():
                self._lengths = np.load(path)
            else:
                import pyarrow.parquet as pq

                parts = []
                for path_k in self.files:
                    handle = pq.ParquetFile(path_k)
                    names = [c for c in {**{"image": "image", "conversations": "conversations"},
                                         **(self.columns or {})}.values() if c in handle.schema_arrow.names]
                    for g in range(handle.metadata.num_row_groups):
                        parts.append(table_lengths(handle.read_row_group(g, columns=names), self.columns))
                self._lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, self._lengths)
                except OSError:
                    pass
        return self._lengths
