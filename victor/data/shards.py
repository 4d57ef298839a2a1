"""webdataset tar shards of LLaVA records: `victor data shard` writes them, `ShardRecords` reads them.

A shard holds, per sample (key `000000123`), the record as `<key>.json` and its images as
`<key>.img0.jpg`, `<key>.img1.png`, ... (the image bytes as they were, not re-encoded); the
record's `image` field names those members (`"img0.jpg"`), and `victor_where` keeps where
the record came from (`data.json[123]`). Shards are plain webdataset tars (written with
`webdataset.ShardWriter`): other tools read them as they are.

Beside the shards, `shards.json` lists them with their sample counts, and `index/` holds per
sample its byte range in its shard and its modality length (`victor.data.index`), so that a
reader seeks straight to any sample: ranks and workers read their own parts of the shards,
and a resumed run starts where it stopped without reading what came before. Shards written by
other tools can be indexed with `victor data shard --index DIR` if their samples are LLaVA
records (`.json` with `conversations`, images named by `image`).

Records that cannot be trained on for what they say (a wrong field, unordered turns, a
missing image file, ...) are left out by the writer and reported, with their place and id, as
`victor data check` reports them; an image that does not decode is found when training reads
it (a skip naming the shard member and the record id), as on the JSON path.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from victor.data.index import modality_length
from victor.data.entries import BrokenLine, DataFormatError, parse_line
from victor.data.llava import EmbeddedImage, LlavaDataset, RecordError, parse_record

INDEX = "shards.json"
VERSION = 1
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def split_name(name: str) -> tuple[str, str] | None:
    match = _KEY.match(name)
    return (match.group(1), match.group(2)) if match else None


# -- writing ----------------------------------------------------------------------------------
def write_shards(data: str | list[str], image_root: str | None, output: str | os.PathLike,
                 samples_per_shard: int = 1000, max_shard_bytes: float = 1e9, progress: bool = True,
                 examples: int = 5) -> dict:
    """LLaVA JSON/JSONL + image folder -> webdataset shards + index in `output`; -> a report."""
    import webdataset as wds
    from tqdm.auto import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if any(output.glob("shard-*.tar")):
        raise DataFormatError(f"{output}: already holds shards; write to an empty folder")
    dataset = LlavaDataset(data, image_root)
    root = Path(image_root) if image_root else None
    skipped: Counter = Counter()
    found: dict[str, list[dict]] = {}
    written = 0
    with wds.ShardWriter(str(output / "shard-%06d.tar"), maxcount=samples_per_shard, maxsize=max_shard_bytes,
                         verbose=0) as sink, tqdm(total=len(dataset), unit="record", desc="sharding",
                                                  disable=not progress) as bar:
        for i in range(len(dataset)):
            bar.update(1)
            where, record = dataset.records[i]
            sample = shard_sample(i, where, record, root)
            if isinstance(sample, RecordError):
                skipped[sample.reason] += 1
                listed = found.setdefault(sample.reason, [])
                if len(listed) < examples:
                    listed.append({"where": sample.skip.where, "id": sample.skip.record_id,
                                   "field": sample.skip.field, "detail": sample.skip.detail})
                continue
            sink.write(sample)
            written += 1
    meta = index_shards(output)
    return {"records": len(dataset), "written": written, "skipped": dict(skipped.most_common()), "examples": found,
            "shards": len(meta["shards"]), "output": str(output)}


def shard_sample(i: int, where: str, record, root: Path | None) -> dict | RecordError:
    """One record -> a webdataset sample dict, or the RecordError that leaves it out."""
    try:
        rid, _, rels = parse_record(record, where)
    except RecordError as err:
        return err
    sample = {"__key__": f"{i:09d}"}
    names = []
    for k, rel in enumerate(rels):
        path = root / rel if root else Path(rel)
        field = "image" if isinstance(record.get("image"), str) else f"image[{k}]"
        if not path.is_file():
            return RecordError("missing_image", where, rid, field, f"{path}: no such file")
        suffix = path.suffix.lower().lstrip(".")
        name = f"img{k}.{suffix if re.fullmatch(r'[a-z0-9]{1,5}', suffix) else 'img'}"
        sample[name] = path.read_bytes()
        names.append(name)
    out = dict(record)
    if names:
        out["image"] = names[0] if isinstance(record.get("image"), str) else names
    out["victor_where"] = where
    sample["json"] = json.dumps(out, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return sample


# -- indexing ---------------------------------------------------------------------------------
def index_shards(directory: str | os.PathLike, shards: list[str] | None = None) -> dict:
    """Scan the tars (members' headers and the `.json` members only) -> `shards.json` + `index/`."""
    directory = Path(directory)
    names = shards or sorted(p.name for p in directory.glob("*.tar"))
    if not names:
        raise DataFormatError(f"{directory}: no .tar shards")
    starts, ends, lengths, entries = [], [], [], []
    for name in names:
        count = 0
        with tarfile.open(directory / name) as tar:
            current, start, end, length = None, 0, 0, -1
            for member in tar:
                if not member.isfile():
                    continue
                parts = split_name(member.name)
                if parts is None:
                    continue
                key, ext = parts
                if key != current:
                    if current is not None:
                        starts.append(start), ends.append(end), lengths.append(length)
                        count += 1
                    current, start, length = key, member.offset, -1
                end = member.offset_data + ((member.size + 511) // 512) * 512
                if ext == "json":
                    length = modality_length(parse_line(tar.extractfile(member).read()))
            if current is not None:
                starts.append(start), ends.append(end), lengths.append(length)
                count += 1
        entries.append({"name": name, "samples": count, "bytes": (directory / name).stat().st_size})
    (directory / "index").mkdir(exist_ok=True)
    np.save(directory / "index" / "starts.npy", np.asarray(starts, dtype=np.int64))
    np.save(directory / "index" / "ends.npy", np.asarray(ends, dtype=np.int64))
    np.save(directory / "index" / "lengths.npy", np.asarray(lengths, dtype=np.int32))
    meta = {"version": VERSION, "shards": entries, "samples": len(starts)}
    (directory / INDEX).write_text(json.dumps(meta, indent=1))
    return meta


def read_shard_index(source: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(source)
    directory = path.parent if path.name == INDEX else path
    try:
        meta = json.loads((directory / INDEX).read_text())
    except FileNotFoundError:
        raise DataFormatError(f"{directory}: no {INDEX}; write shards with `victor data shard`, or index existing "
                              f"webdataset tars with `victor data shard --index {directory}`") from None
    except ValueError as err:
        raise DataFormatError(f"{directory / INDEX}: not valid JSON ({err})") from None
    return directory, meta


# -- reading ----------------------------------------------------------------------------------
class ShardRecords:
    """Shards as (where, record) by position, as `LlavaDataset.records`: images come as
    EmbeddedImage (the member's bytes). One `os.pread` of the sample's byte range per read."""

    def __init__(self, source: str | os.PathLike):
        self.directory, meta = read_shard_index(source)
        self.names = [s["name"] for s in meta["shards"]]
        self.counts = np.asarray([s["samples"] for s in meta["shards"]], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.counts)])
        self._fds: dict[int, int] = {}
        self._starts = self._ends = None
        missing = [n for n in self.names if not (self.directory / n).is_file()]
        if missing:
            raise DataFormatError(f"{self.directory}: shards listed in {INDEX} are missing: {', '.join(missing[:5])}")

    def __len__(self) -> int:
        return int(self.cum[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}, "_starts": None, "_ends": None}

    @property
    def parts(self) -> np.ndarray:
        """Samples per shard, in order: what a streaming epoch shuffles."""
        return self.counts

    @property
    def lengths(self) -> np.ndarray:
        return np.load(self.directory / "index" / "lengths.npy")

    def locate(self, index: int) -> tuple[int, str]:
        shard = int(np.searchsorted(self.cum, index, side="right")) - 1
        return shard, self.names[shard]

    def raw(self, index: int) -> tuple[str, bytes]:
        if self._starts is None:
            self._starts = np.load(self.directory / "index" / "starts.npy", mmap_mode="r")
            self._ends = np.load(self.directory / "index" / "ends.npy", mmap_mode="r")
        shard, name = self.locate(index)
        if shard not in self._fds:
            self._fds[shard] = os.open(self.directory / name, os.O_RDONLY)
        start, end = int(self._starts[index]), int(self._ends[index])
        return name, os.pread(self._fds[shard], end - start, start)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        name, data = self.raw(index)
        members, key = {}, None
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    parts = split_name(member.name) if member.isfile() else None
                    if parts:
                        key, ext = parts
                        members[ext] = tar.extractfile(member).read()
        except tarfile.TarError as err:
            return f"{self.directory / name}[{index}]", BrokenLine(f"not a readable tar sample ({err})")
        where = f"{self.directory / name}:{key}"
        if "json" not in members:
            return where, BrokenLine("no .json member")
        record = parse_line(members["json"])
        if isinstance(record, dict):
            record = embed(record, members, where)
        return where, record

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def embed(record: dict, members: dict[str, bytes], where: str) -> dict:
    """The record with image member names replaced by EmbeddedImage (names not among the members
    stay as they are: paths relative to image_root)."""
    value = record.get("image")

    def one(name):
        return EmbeddedImage(f"{where}.{name}", members[name]) if isinstance(name, str) and name in members else name

    if isinstance(value, list):
        record["image"] = [one(v) for v in value]
    elif value is not None:
        record["image"] = one(value)
    return record
