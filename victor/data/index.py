"""A constant-memory index of LLaVA JSON / JSONL files: records read one at a time from disk.

`LlavaDataset` used to hold every record as Python objects: a 1 M-record caption file is
~2 GB resident per process, and each forked DataLoader worker copies its share again
(reference counting writes to the shared pages). The index replaces that list:

* a JSONL file is indexed in place: the byte offset and line number of every record;
* a JSON list is converted once, streaming (bounded memory), into compact JSONL
  (`records.jsonl` in the index) and indexed the same way;
* beside the offsets, every record's *modality length* (its words, negated for text-only
  records: what `victor.data.sampler` groups by and `check_lengths_fit` probes with) is
  stored, computed without a tokenizer.

The index is a folder `<data file>.vindex/` next to the data (or, where that folder cannot be
written, under `$VICTOR_INDEX_DIR` or `~/.cache/victor/index/`), built on first use or by
`victor data index`, and rebuilt when the data file's size or modification time changes.
Several processes (ranks) opening the same file wait on a file lock while one builds it.

Reading record `i` is one `os.pread` of its bytes and one `json.loads`: offsets and lengths
are numpy arrays (memory-mapped), so a process and its workers hold a few bytes per record,
shared, instead of the records. What a record *means* (skips, `where` strings, the file-level
`DataFormatError`s) is exactly what `entries.read_entries` gives for the same file.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from array import array
from pathlib import Path

import numpy as np

from victor.data.entries import BrokenLine, DataFormatError, parse_line, read_entries

log = logging.getLogger(__name__)

VERSION = 1
SUFFIX = ".vindex"
CHUNK = 1 << 24  # bytes read at a time while converting a JSON list
SMALL_FILE = 64 << 20  # below this, a file-level error is worded by `read_entries` itself
_WS = re.compile(r"[ \t\n\r]*")


def modality_length(record) -> int:
    """The words of a record's conversation (>= 1), negated for text-only records; -1 for a value
    that is not a record (a broken line, a list, ...). LLaVA's `modality_lengths`, without a tokenizer."""
    if not isinstance(record, dict):
        return -1
    turns = record.get("conversations") if isinstance(record.get("conversations"), list) else []
    words = max(1, sum(len(str(t.get("value", "")).split()) for t in turns if isinstance(t, dict)))
    return words if record.get("image") else -words


# -- where the index lives --------------------------------------------------------------------
def _cache_root() -> Path:
    if os.environ.get("VICTOR_INDEX_DIR"):
        return Path(os.environ["VICTOR_INDEX_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "victor" / "index"


def candidate_dirs(path: Path) -> list[Path]:
    """Where the index of `path` may live, in the order they are tried."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    cached = _cache_root() / f"{resolved.name}-{digest}{SUFFIX}"
    beside = resolved.with_name(resolved.name + SUFFIX)
    return [cached] if os.environ.get("VICTOR_INDEX_DIR") else [beside, cached]


def source_key(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def is_current(directory: Path, path: Path) -> bool:
    meta = read_meta(directory)
    return bool(meta) and meta.get("version") == VERSION and meta.get("source") == source_key(path)


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock beside `directory`: one process builds, the others wait and reuse."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / (directory.name + ".lock"), "a+b") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        yield


def _writable(directory: Path) -> bool:
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return os.access(parent, os.W_OK)


def ensure_index(path: str | os.PathLike, rebuild: bool = False, progress: bool = False) -> Path:
    """The folder of `path`'s current index, built (under a lock) if missing or stale.
    Raises DataFormatError for a file that is not LLaVA JSON/JSONL, as `read_entries` does."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such data file")
    candidates = candidate_dirs(path)
    if not rebuild:
        for directory in candidates:
            if is_current(directory, path):
                return directory
    for directory in candidates:
        if not _writable(directory):
            continue
        with _locked(directory):
            if rebuild or not is_current(directory, path):  # another process may have built it meanwhile
                build_index(path, directory, progress)
        return directory
    raise DataFormatError(f"{path}: cannot write its index beside it or in {_cache_root()}; set VICTOR_INDEX_DIR "
                          "to a writable folder")


# -- building ---------------------------------------------------------------------------------
def first_byte(path: Path) -> bytes:
    """The first non-whitespace byte after any UTF-8 byte-order mark (b"" for an empty file)."""
    with open(path, "rb") as f:
        head = f.read(3)
        if head != b"\xef\xbb\xbf":
            f.seek(0)
        while True:
            block = f.read(65536)
            if not block:
                return b""
            stripped = block.lstrip()
            if stripped:
                return stripped[:1]


def build_index(path: Path, directory: Path, progress: bool = False) -> dict:
    """Write the index of `path` into `directory` (replacing it). -> its meta."""
    key = source_key(path)
    start = time.perf_counter()
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if first_byte(path) == b"[":
            fmt, arrays = "json", convert_json_list(path, tmp / "records.jsonl", progress)
        else:
            fmt, arrays = "jsonl", scan_jsonl(path, progress)
            if arrays is None:  # not JSONL: one JSON document (a multi-line object), or an error
                fmt, arrays = "json", write_records(path, tmp / "records.jsonl", whole_document(path))
        offsets, lengths, lines = arrays
        count = len(lengths)
        check_conversations(path, tmp, fmt, offsets, count)
        np.save(tmp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
        np.save(tmp / "lengths.npy", np.frombuffer(lengths, dtype=np.int32))
        if lines is not None:
            np.save(tmp / "lines.npy", np.frombuffer(lines, dtype=np.int64))
        meta = {"version": VERSION, "source": key, "path": str(path.resolve()), "format": fmt, "records": count,
                "seconds": round(time.perf_counter() - start, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("indexed %s: %d records in %.1f s (%s)", path, count, meta["seconds"], directory)
    return meta


def _bar(path: Path, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"indexing {path.name}",
                disable=not progress)


def iter_json_list(path: Path, progress: bool = False):
    """The elements of a JSON list, decoded one at a time from a bounded window of the file.
    Any error (not UTF-8, not a list, broken JSON) is `read_entries`' DataFormatError."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    state = {"buf": "", "pos": 0, "eof": False}
    bar = _bar(path, progress)

    def more(f) -> None:
        data = f.read(CHUNK)
        bar.update(len(data))
        try:
            text = utf8.decode(data, final=not data)
        except UnicodeDecodeError:
            fail(path)
        state["eof"] = not data
        state["buf"], state["pos"] = state["buf"][state["pos"]:] + text, 0

    def skip_ws(f) -> str | None:
        while True:
            state["pos"] = _WS.match(state["buf"], state["pos"]).end()
            if state["pos"] < len(state["buf"]):
                return state["buf"][state["pos"]]
            if state["eof"]:
                return None
            more(f)

    with open(path, "rb") as f, bar:
        more(f)
        if state["buf"].startswith("\ufeff"):
            state["pos"] = 1
        if skip_ws(f) != "[":
            fail(path)
        state["pos"] += 1
        expect_value = None  # None: first element or "]"; True: after ","; False: after a value
        while True:
            c = skip_ws(f)
            if c is None:
                fail(path)
            if c == "]" and expect_value is not True:
                state["pos"] += 1
                if skip_ws(f) is not None:
                    fail(path)
                return
            if expect_value is False:
                if c != ",":
                    fail(path)
                state["pos"] += 1
                expect_value = True
                continue
            try:
                value, end = decoder.raw_decode(state["buf"], state["pos"])
            except json.JSONDecodeError:
                if state["eof"]:
                    fail(path)
                more(f)
                continue
            if end >= len(state["buf"]) and not state["eof"]:  # a number may go on in the next block
                more(f)
                continue
            state["pos"], expect_value = end, False
            yield value


def fail(path: Path, message: str = "neither a JSON list nor JSONL (a JSON list that does not parse to its end)"):
    """Raise the DataFormatError `read_entries` gives for this file (its wording, its line numbers)."""
    if path.stat().st_size <= SMALL_FILE:
        read_entries(path)  # raises for a broken file
    raise DataFormatError(f"{path}: {message}")


def _dumps(value) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as escapes
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def write_records(path: Path, out: Path, values) -> tuple[array, array, None]:
    """Values -> one compact JSON line each in `out`; -> (offsets (n + 1), lengths, None)."""
    offsets, lengths = array("q", [0]), array("i")
    with open(out, "wb", buffering=1 << 20) as f:
        for value in values:
            line = _dumps(value) + b"\n"
            f.write(line)
            offsets.append(offsets[-1] + len(line))
            lengths.append(modality_length(value))
    return offsets, lengths, None


def convert_json_list(path: Path, out: Path, progress: bool = False):
    return write_records(path, out, iter_json_list(path, progress))


def whole_document(path: Path):
    """A file that is neither a JSON list nor JSONL may still be one JSON object (a one-record
    file printed over several lines), as `read_entries` reads it; anything else is its error."""
    if path.stat().st_size > SMALL_FILE:
        fail(path)
    return [record for _, record in read_entries(path)]


def scan_jsonl(path: Path, progress: bool = False):
    """(offsets (n + 1), lengths, line numbers) of the non-blank lines of a JSONL file, or None
    when no line is a JSON value (not JSONL at all)."""
    offsets, lengths, lines = array("q"), array("i"), array("q")
    position, any_value = 0, False
    with open(path, "rb") as f, _bar(path, progress) as bar:
        for number, line in enumerate(f, 1):
            start = position
            position += len(line)
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                start, line = start + 3, line[3:]
            if not line.strip():
                continue
            record = parse_line(line)
            any_value = any_value or not isinstance(record, BrokenLine)
            offsets.append(start)
            lengths.append(modality_length(record))
            lines.append(number)
            if number % 65536 == 0:
                bar.update(position - bar.n)
        bar.update(position - bar.n)
    if not any_value:
        return None
    offsets.append(position)
    return offsets, lengths, lines


def check_conversations(path: Path, tmp: Path, fmt: str, offsets: array, count: int) -> None:
    """As `read_entries`: a file none of whose first 100 records has `conversations` is not LLaVA data."""
    source = tmp / "records.jsonl" if fmt == "json" else path
    with open(source, "rb") as f:
        for i in range(min(count, 100)):
            f.seek(offsets[i])
            record = parse_line(f.read(offsets[i + 1] - offsets[i]).partition(b"\n")[0])
            if isinstance(record, dict) and "conversations" in record:
                return
    if count:
        fail(path, "no record has a 'conversations' field; is this a LLaVA conversation file?")


# -- reading ----------------------------------------------------------------------------------
class IndexedFile:
    """One indexed data file: `len()`, and `[i]` -> (where, record) as `read_entries` gives it."""

    def __init__(self, path: str | os.PathLike, rebuild: bool = False, progress: bool = False):
        self.path = str(Path(path))
        self.directory = ensure_index(path, rebuild, progress)
        meta = read_meta(self.directory)
        self.format, self.count = meta["format"], meta["records"]
        self.source = str(self.directory / "records.jsonl") if self.format == "json" else str(Path(path).resolve())
        self._fd: int | None = None
        self._pid: int | None = None
        self._offsets = self._lines = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:  # spawned workers reopen the file and arrays themselves
        return {**self.__dict__, "_fd": None, "_pid": None, "_offsets": None, "_lines": None}

    def _open(self) -> None:
        self._fd = os.open(self.source, os.O_RDONLY)
        self._pid = os.getpid()
        self._offsets = np.load(self.directory / "offsets.npy", mmap_mode="r")
        if self.format == "jsonl":
            self._lines = np.load(self.directory / "lines.npy", mmap_mode="r")

    def raw(self, i: int) -> bytes:
        if self._fd is None:
            self._open()
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.pread(self._fd, end - start, start)

    def where(self, i: int) -> str:
        if self.format == "json":
            return f"{self.path}[{i}]"
        if self._fd is None:
            self._open()
        return f"{self.path}:{int(self._lines[i])}"

    def __getitem__(self, i: int):
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} of {self.count}")
        return self.where(i), parse_line(self.raw(i).partition(b"\n")[0])  # the span runs on over blank lines

    @property
    def lengths(self) -> np.ndarray:
        return np.load(self.directory / "lengths.npy")

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class IndexedRecords:
    """Several indexed files as one sequence of (where, record), as `LlavaDataset.records`."""

    def __init__(self, paths: list[str], rebuild: bool = False, progress: bool = False):
        self.files = [IndexedFile(p, rebuild, progress) for p in paths]
        self.starts = np.cumsum([0] + [len(f) for f in self.files])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.files[k][index - int(self.starts[k])]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        """Modality lengths of every record (int32; see `modality_length`)."""
        if not self.files:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([f.lengths for f in self.files])
