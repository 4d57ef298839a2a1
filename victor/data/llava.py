"""LLaVA conversation JSON (or JSONL) + an image folder -> samples.

A record is `{"id", "image": "rel/path.png" | [paths] (optional), "conversations":
[{"from": "human"|"gpt"|"system", "value": str}, ...]}`. `<image>` may stand anywhere in the
first human turn; text-only records have no `image`. A file that is not this format is a
clear error naming the file; a single broken record or unreadable image is skipped and
counted (training must not die on sample 1,234,567).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from victor.data.templates import IMAGE_TOKEN

log = logging.getLogger(__name__)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataFormatError(ValueError):
    pass


@dataclass
class Sample:
    id: str
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str with <image>}]
    images: list[Image.Image] = field(default_factory=list)
    index: int = -1  # position in its dataset: keys the sample's stage-1.5 masks


def read_records(path: str | os.PathLike) -> list[dict]:
    """A JSON list or JSONL file of records; a clear error if it is neither."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
        records = [records] if isinstance(records, dict) else records  # a one-line JSONL file
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{n}: neither a JSON list nor JSONL ({err.msg})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataFormatError(f"{path}: expected a list of LLaVA records (objects with 'conversations')")
    if records and not any("conversations" in r for r in records[:100]):
        raise DataFormatError(f"{path}: no record has a 'conversations' field; is this a LLaVA conversation file?")
    return records


def parse_record(record: dict, where: str) -> tuple[str, list[dict], list[str]]:
    """-> (id, messages, image paths). Raises DataFormatError naming `where` and the field."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(f"{where}: 'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise DataFormatError(f"{where}: conversations[{i}] needs 'from' (human/gpt/system) and a string 'value'")
        messages.append({"role": role, "content": turn["value"]})
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    n_tags = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if images and n_tags == 0:
        # LLaVA convention: an image record without a tag gets the image before the first human turn
        first = next(m for m in messages if m["role"] == "user")
        first["content"] = IMAGE_TOKEN * len(images) + "\n" + first["content"]
        n_tags = len(images)
    if n_tags != len(images):
        raise DataFormatError(f"{where}: {n_tags} '{IMAGE_TOKEN}' tags but {len(images)} images")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"{where}: no 'gpt' turn to supervise")
    return str(record.get("id", where)), messages, images


class LlavaDataset(Dataset):
    """Records from one or more LLaVA files; `__getitem__` returns a Sample, or None if broken."""

    def __init__(self, paths: str | list[str], image_root: str | os.PathLike | None = None):
        paths = [p for p in (paths.split(",") if isinstance(paths, str) else paths) if p]
        self.records: list[tuple[str, dict]] = []
        for path in paths:
            self.records += [(f"{path}[{i}]", r) for i, r in enumerate(read_records(path))]
        self.image_root = Path(image_root) if image_root else None
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Per record, the words of its conversation (>= 1), negated for text-only records: LLaVA's
        `modality_lengths`, for grouped batching (`victor.data.sampler`). No image is opened."""
        def words(record: dict) -> int:
            turns = record.get("conversations") if isinstance(record.get("conversations"), list) else []
            return max(1, sum(len(str(t.get("value", "")).split()) for t in turns if isinstance(t, dict)))

        return [words(r) if r.get("image") else -words(r) for _, r in self.records]

    def load_image(self, rel: str) -> Image.Image:
        path = self.image_root / rel if self.image_root else Path(rel)
        with Image.open(path) as img:
            return img.convert("RGB")

    def __getitem__(self, index: int) -> Sample | None:
        where, record = self.records[index]
        try:
            sid, messages, rels = parse_record(record, where)
            images = [self.load_image(r) for r in rels]
        except (DataFormatError, OSError) as err:
            self.skipped[type(err).__name__] += 1
            log.warning("skipping %s", err)
            return None
        return Sample(sid, messages, images, index)
