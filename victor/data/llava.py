"""LLaVA conversation JSON (or JSONL) + an image folder -> samples.

A record is `{"id", "image": "rel/path.png" | [paths] (optional), "conversations":
[{"from": "human"|"gpt"|"system", "value": str}, ...]}`. `<image>` markers stand in human
turns, one per image; an image record without any marker gets its images before the first
human turn (the LLaVA convention); text-only records have no `image`. Turns alternate human,
gpt, human, gpt, ... after any system turns, and end with a non-empty gpt answer.

A file that is not this format (not JSON, not UTF-8, no `conversations` anywhere) is a
`DataFormatError` naming the file, raised when the dataset is built. Everything wrong with
one record (a wrong field type, a JSONL line that does not parse, a missing or broken image,
...) is a skip: `LlavaDataset[i]` returns a `skips.Skipped` naming the file, the position,
the record id, the field and a reason, logs it (rate-limited) and counts it in `skipped`. It
never raises, so no record can end an epoch or a run (the DataLoader takes a StopIteration
from `__getitem__` for the end of the data).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from victor.data.entries import BrokenLine, DataFormatError, read_entries
from victor.data.images import MAX_IMAGE_PIXELS, WHITE, ImageError, load_image, load_image_bytes
from victor.data.skips import SkipLog, Skipped, kind
from victor.data.templates import IMAGE_TOKEN

log = logging.getLogger(__name__)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(DataFormatError):
    """One record that cannot be trained on; `reason` is one of skips.REASONS."""

    def __init__(self, reason: str, where: str, record_id: str | None, field: str, detail: str):
        self.skip = Skipped(reason, where, record_id, field, detail)
        super().__init__(str(self.skip))

    @property
    def reason(self) -> str:
        return self.skip.reason


class EmbeddedImage(str):
    """An image carried inside the data (a shard member, a `datasets` Image column): a string (its
    name, what the record's `image` field and messages show) with its encoded bytes in `data`."""

    def __new__(cls, name: str, data: bytes):
        obj = super().__new__(cls, name)
        obj.data = data
        return obj

    def __reduce__(self):
        return EmbeddedImage, (str(self), self.data)


@dataclass
class Sample:
    id: str
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str with <image>}]
    images: list[Image.Image] = field(default_factory=list)
    index: int = -1  # position in its dataset: keys the sample's stage-1.5 masks
    where: str = ""  # "file[index]" or "file:line", for messages


def record_id(record: dict) -> str | None:
    """The record's `id` as a string, if it is a string or a number."""
    rid = record.get("id")
    return str(rid) if isinstance(rid, (str, int, float)) and not isinstance(rid, bool) else None


def parse_record(record, where: str) -> tuple[str, list[dict], list[str]]:
    """-> (id, messages, image paths). Raises RecordError naming `where`, the id and the field."""
    if isinstance(record, BrokenLine):
        raise RecordError("bad_json", where, None, "line", record.detail)
    if not isinstance(record, dict):
        raise RecordError("bad_record", where, None, "record", f"expected a JSON object, got {kind(record)}")
    rid = record_id(record)

    def fail(reason, field, detail):
        return RecordError(reason, where, rid, field, detail)

    if "id" in record and record["id"] is not None and rid is None:
        raise fail("bad_record", "id", f"expected a string or a number, got {kind(record['id'])}")
    messages = parse_turns(record.get("conversations", None), fail)
    images = parse_images(record.get("image"), fail)
    check_markers(messages, images, fail)
    return rid if rid is not None else where, messages, images


def parse_turns(turns, fail) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        got = "missing" if turns is None else f"got {kind(turns)}"
        raise fail("bad_record", "conversations", f"expected a non-empty list of turns, {got}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise fail("bad_record", f"conversations[{i}]", f"expected an object with 'from' and 'value', got {kind(turn)}")
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(role, str) or role not in ROLES:
            raise fail("bad_record", f"conversations[{i}].from",
                       f"expected 'human', 'gpt' or 'system' (or 'user', 'assistant'), got {kind(role)}")
        if not isinstance(value, str):
            raise fail("bad_record", f"conversations[{i}].value", f"expected a string, got {kind(value)}")
        messages.append({"role": ROLES[role], "content": value})
    check_order(messages, fail)
    return messages


def check_order(messages: list[dict], fail) -> None:
    """System turns first, then human, gpt, human, gpt, ..., ending with a non-empty gpt answer."""
    start = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("no_answer", "conversations", "no 'gpt' turn to supervise")
    for i, m in enumerate(messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            name = {"user": "human", "assistant": "gpt", "system": "system"}
            raise fail("turn_order", f"conversations[{i}].from",
                       f"expected a {name[expected]} turn, got {name[m['role']]} (turns must alternate human, gpt, "
                       "... after any system turns)")
        if expected == "assistant" and not m["content"].strip():
            raise fail("empty_answer", f"conversations[{i}].value", "the gpt answer is empty")
    if messages[-1]["role"] != "assistant":
        raise fail("turn_order", f"conversations[{len(messages) - 1}]", "the last human turn has no gpt answer")


def parse_images(value, fail) -> list[str]:
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list):
        raise fail("bad_record", "image", f"expected a path or a list of paths, got {kind(value)}")
    for k, rel in enumerate(paths):
        name = "image" if isinstance(value, str) else f"image[{k}]"
        if not isinstance(rel, str) or not rel.strip():
            raise fail("bad_record", name, f"expected a non-empty path string, got {kind(rel)}")
    return list(paths)


def check_markers(messages: list[dict], images: list[str], fail) -> None:
    """One `<image>` per image, in human turns only; none at all puts them before the first human turn."""
    for i, m in enumerate(messages):
        if m["role"] != "user" and IMAGE_TOKEN in m["content"]:
            who = "gpt" if m["role"] == "assistant" else "system"
            raise fail("image_marker_misplaced", f"conversations[{i}].value", f"'{IMAGE_TOKEN}' in a {who} turn")
    n_tags = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if images and n_tags == 0:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise fail("image_marker_mismatch", "conversations", "images but no human turn to put them in")
        first["content"] = IMAGE_TOKEN * len(images) + "\n" + first["content"]
        n_tags = len(images)
    if n_tags != len(images):
        raise fail("image_marker_mismatch", "conversations",
                   f"{n_tags} '{IMAGE_TOKEN}' tags but {len(images)} images")


class LlavaDataset(Dataset):
    """Records from one or more LLaVA files; `__getitem__` returns a Sample, or a Skipped.

    The records are read from disk one at a time through an index (`victor.data.index`: built
    once next to the data, a few bytes per record in memory, shared by DataLoader workers);
    `in_memory=True` reads the files into Python lists instead (the old loader: ~2 GB per
    process and per worker at 1 M records). Both give the same records, skips and lengths.
    `max_image_pixels` refuses larger images (decompression bombs); transparency is composited
    onto `alpha_background` (see images.py). `skipped` counts skips by reason, in this process.
    """

    def __init__(self, paths: str | list[str], image_root: str | os.PathLike | None = None,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS, alpha_background: tuple[int, int, int] = WHITE,
                 in_memory: bool = False, records=None):
        paths = [p for p in (paths.split(",") if isinstance(paths, str) else paths) if p]
        if records is not None:  # another source's records (`victor.data.hf`), (where, record) by position
            self.records = records
        elif in_memory:
            self.records = []
            for path in paths:
                self.records += read_entries(path)
        else:
            from victor.data.index import IndexedRecords

            self.records = IndexedRecords(paths)
        self.image_root = Path(image_root) if image_root else None
        self.max_image_pixels, self.alpha_background = max_image_pixels, alpha_background
        self.skips = SkipLog(log)
        self.skipped = self.skips.counts

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self):
        """Per record, the words of its conversation (>= 1), negated for text-only records: LLaVA's
        `modality_lengths`, for grouped batching (`victor.data.sampler`). No image is opened; with
        the index they are read from it (an int32 array), not computed."""
        from victor.data.index import modality_length

        stored = getattr(self.records, "lengths", None)
        return stored if stored is not None else [modality_length(r) for _, r in self.records]

    @property
    def stored_lengths(self):
        """`modality_lengths` where the records store them (an index: no pass over the data), else None."""
        return getattr(self.records, "lengths", None)

    def load_image(self, rel: str) -> Image.Image:
        if isinstance(rel, EmbeddedImage):
            return load_image_bytes(rel.data, rel, self.max_image_pixels, self.alpha_background)
        path = self.image_root / rel if self.image_root else Path(rel)
        return load_image(path, self.max_image_pixels, self.alpha_background)

    def __getitem__(self, index: int) -> Sample | Skipped:
        where, record = self.records[index]  # an index out of range is an IndexError, as it must be
        try:
            result = self.read(where, record, index)
        except Exception as err:  # a bug, not a data problem; still never the end of the epoch
            rid = record_id(record) if isinstance(record, dict) else None
            result = Skipped("unexpected_error", where, rid, "record", f"{type(err).__name__}: {err}", index)
        if isinstance(result, Skipped):
            self.skips(result)
        return result

    def read_text(self, index: int) -> Sample | None:
        """Record `index` as a Sample without its images (None if the record is malformed): for
        checks that need the text only. Counts and logs nothing."""
        where, record = self.records[index]
        try:
            rid, messages, _ = parse_record(record, where)
        except RecordError:
            return None
        return Sample(rid, messages, [], index, where)

    def read(self, where: str, record, index: int) -> Sample | Skipped:
        try:
            rid, messages, rels = parse_record(record, where)
        except RecordError as err:
            err.skip.index = index
            return err.skip
        images = []
        for k, rel in enumerate(rels):
            try:
                images.append(self.load_image(rel))
            except ImageError as err:
                name = "image" if len(rels) == 1 else f"image[{k}]"
                return Skipped(err.reason, where, record_id(record), name, str(err), index)
        return Sample(rid, messages, images, index, where)
