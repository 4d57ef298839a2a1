"""A LLaVA data file's entries: a JSON list or a JSONL file -> `(where, record)` pairs.

What a *file* may be is decided here, for the in-memory reader (`read_entries`) and for the
index (`victor.data.index`, which gives the same records, `where` strings and errors): a file
that is not JSON/JSONL conversation data is a `DataFormatError` naming the file and the line;
a JSONL line that does not decode is kept in place as a `BrokenLine` (a skip when read). What a
*record* means (turns, images, skips) is `victor.data.llava`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class DataFormatError(ValueError):
    """A data file that is not LLaVA conversation JSON/JSONL."""


@dataclass
class BrokenLine:
    """A JSONL line that could not be decoded: kept in place so that reading it is a skip."""

    detail: str


def read_entries(path: str | os.PathLike) -> list[tuple[str, object]]:
    """[(where, record)] from a JSON list or a JSONL file; `where` is `file[i]` or `file:line`.

    A file that does not parse as one JSON document and does not start with `[` is read as
    JSONL, line by line: a line that is not UTF-8 or not JSON becomes a `BrokenLine` (a skip
    when read). A broken JSON list, a file that is no JSON at all, or a JSON list that is not
    UTF-8 is a DataFormatError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such data file")
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        entries = read_jsonl(path, raw, err)
    else:
        if isinstance(document, dict):  # a one-line JSONL file
            document = [document]
        if not isinstance(document, list):
            raise DataFormatError(f"{path}: expected a list of LLaVA records (objects with 'conversations'), "
                                  f"got a JSON {type(document).__name__}")
        entries = [(f"{path}[{i}]", r) for i, r in enumerate(document)]
    if entries and not any(isinstance(r, dict) and "conversations" in r for _, r in entries[:100]):
        raise DataFormatError(f"{path}: no record has a 'conversations' field; is this a LLaVA conversation file?")
    return entries


def read_jsonl(path: Path, raw: bytes, document_error: Exception) -> list[tuple[str, object]]:
    """JSONL lines; the document's own error if it is a JSON list or no line parses."""
    first = next((n for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()), 1)
    if isinstance(document_error, UnicodeDecodeError) and raw.lstrip().startswith(b"["):
        line = raw[: document_error.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not valid UTF-8 (byte {document_error.start} of the file: "
                              f"{document_error.reason}); save the file as UTF-8")
    if isinstance(document_error, json.JSONDecodeError) and raw.lstrip().startswith(b"["):
        raise DataFormatError(f"{path}:{first}: neither a JSON list nor JSONL (the JSON list breaks at line "
                              f"{document_error.lineno}, column {document_error.colno}: {document_error.msg})")
    entries: list[tuple[str, object]] = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            entries.append((f"{path}:{n}", parse_line(line)))
    if not any(not isinstance(r, BrokenLine) for _, r in entries):
        detail = entries[0][1].detail if entries else "empty file"
        raise DataFormatError(f"{path}:{first}: neither a JSON list nor JSONL ({detail})")
    return entries


def parse_line(line: bytes):
    """One JSONL line -> its value, or a BrokenLine saying why not."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        return BrokenLine(f"not valid UTF-8 (byte {err.start} of the line: {err.reason})")
    except json.JSONDecodeError as err:
        return BrokenLine(f"not valid JSON ({err.msg}, column {err.colno})")


def read_records(path: str | os.PathLike) -> list:
    """The records of a JSON list or JSONL file (see `read_entries`)."""
    return [record for _, record in read_entries(path)]
