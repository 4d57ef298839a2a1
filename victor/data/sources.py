"""Every kind of training data behind one call, `make_dataset(data_args)`.

`data_path` names one of:

* LLaVA conversation JSON / JSONL file(s), comma-separated: `LlavaDataset` over the record
  index (`victor.data.index`);
* a local Hugging Face dataset: parquet file(s) or folder, an `.arrow` file, or a
  `save_to_disk` folder: `HFLlavaDataset` (memory-mapped Arrow);
* webdataset shards written by `victor data shard` (a folder with `shards.json`, or that
  file): streamed, split across ranks and workers (`victor.data.stream`);
* a mixture YAML (`.yaml`/`.yml`): several sources of any of these kinds with sampling weights,
  LLaVA-NeXT's data YAML extended (see `MixtureSpec`).

Map-style sources (JSON, HF) give a `torch` map-style dataset (`len`, `[i]`, `read_text`,
`modality_lengths`); if any source streams, the result streams.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from torch.utils.data import Dataset

from victor.config import ConfigError
from victor.data.images import MAX_IMAGE_PIXELS
from victor.data.llava import LlavaDataset, Sample
from victor.data.skips import SkipLog, Skipped

KINDS = ("llava", "hf", "shards", "parquet-stream")


def source_kind(path: str) -> str:
    """The kind of a data path, from what is there."""
    from victor.data.hf import is_hf_source

    p = Path(path)
    if path.endswith((".yaml", ".yml")):
        return "mixture"
    if p.name == "shards.json" or (p.is_dir() and (p / "shards.json").is_file()):
        return "shards"
    if is_hf_source(path):
        return "hf"
    return "llava"


# -- one source -------------------------------------------------------------------------------
@dataclass
class SourceSpec:
    """One entry of a mixture (or the whole `data_path`)."""

    path: str
    kind: str | None = None  # llava | hf | shards | parquet-stream; unset: from the path
    image_root: str | None = None
    weight: float | None = None
    sampling_strategy: str = "all"  # LLaVA-NeXT: all | first:N | end:N | random:N | random:P%
    columns: dict[str, str] = field(default_factory=dict)  # hf: id / image / conversations column names
    split: str = "train"
    name: str = ""


def open_source(spec: SourceSpec, max_image_pixels: int | None = MAX_IMAGE_PIXELS, seed: int = 0):
    """A dataset for one source (map-style, or a `StreamingDataset` for shards / parquet-stream)."""
    kind = spec.kind or source_kind(spec.path)
    if kind not in KINDS:
        raise ConfigError(f"data source {spec.path}: kind={kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "llava":
        dataset = LlavaDataset(spec.path, spec.image_root, max_image_pixels=max_image_pixels)
    elif kind == "hf":
        from victor.data.hf import HFLlavaDataset

        dataset = HFLlavaDataset(spec.path, spec.image_root, max_image_pixels, split=spec.split,
                                 columns=spec.columns or None)
    else:
        from victor.data.stream import open_stream

        return open_stream(spec, max_image_pixels, seed)
    if spec.sampling_strategy not in ("all", "", None):
        dataset = Subset(dataset, strategy_rows(len(dataset), spec.sampling_strategy, seed, spec.path))
    return dataset


def strategy_rows(n: int, strategy: str, seed: int, where: str) -> np.ndarray:
    """LLaVA-NeXT's `sampling_strategy`: which rows of a source of `n` records are used."""
    how, _, amount = strategy.partition(":")
    if how not in ("first", "end", "random") or not amount:
        raise ConfigError(f"{where}: sampling_strategy={strategy!r}; use all, first:N, end:N, random:N or random:P%")
    try:
        count = round(n * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        raise ConfigError(f"{where}: sampling_strategy={strategy!r}: {amount!r} is not a count or a percentage") from None
    count = max(0, min(n, count))
    if how == "first":
        return np.arange(count)
    if how == "end":
        return np.arange(n - count, n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


class Subset(Dataset):
    """Some rows of a map-style source, in order."""

    def __init__(self, dataset, rows: np.ndarray):
        self.dataset, self.rows = dataset, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.dataset[int(self.rows[i])]

    def read_text(self, i: int):
        return self.dataset.read_text(int(self.rows[i]))

    @property
    def stored_lengths(self):
        lengths = stored_lengths(self.dataset)
        return None if lengths is None else lengths[self.rows]

    @property
    def modality_lengths(self):
        return np.asarray(self.dataset.modality_lengths)[self.rows]

    @property
    def skips(self):
        return self.dataset.skips

    @skips.setter
    def skips(self, value):
        self.dataset.skips = value
        self.dataset.skipped = value.counts

    @property
    def skipped(self):
        return self.dataset.skipped


def stored_lengths(dataset):
    return getattr(dataset, "stored_lengths", None)


# -- mixtures ---------------------------------------------------------------------------------
@dataclass
class MixtureSpec:
    """A mixture YAML, LLaVA-NeXT's data YAML extended:

        datasets:
          - json_path: captions.json        # or path:; LLaVA JSON/JSONL, HF parquet/arrow/folder, shards
            image_folder: images/           # or image_root:; default: the recipe's image_root
            sampling_strategy: random:50%   # LLaVA-NeXT's: all | first:N | end:N | random:N | random:P%
            weight: 0.7                     # share of the mixture's samples from this source
          - path: recap/                    # kind: hf (found from the path when unset)
            weight: 0.3
        samples: 100000                     # samples per epoch; default: the sources' sizes summed
        seed: 0

    Without weights the sources are concatenated (LLaVA-NeXT). With weights (every source then
    needs one; they are normalised), source k gives round(weight_k x samples) samples per epoch
    (largest remainders), its rows in a seeded random order, repeated when it is oversampled.
    Relative paths are read from the YAML's folder when they exist there.
    """

    sources: list[SourceSpec]
    samples: int | None = None
    seed: int = 0

    @property
    def weighted(self) -> bool:
        return any(s.weight is not None for s in self.sources)


SOURCE_KEYS = {"json_path": "path", "path": "path", "data_path": "path", "image_folder": "image_root",
               "image_root": "image_root", "kind": "kind", "weight": "weight",
               "sampling_strategy": "sampling_strategy", "columns": "columns", "split": "split", "name": "name"}


def read_mixture(path: str, image_root: str | None = None) -> MixtureSpec:
    """Parse a mixture YAML; every mistake is a ConfigError naming the file and the entry."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such mixture file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list) or not doc["datasets"]:
        raise ConfigError(f"{path}: a mixture is a mapping with `datasets:`, a non-empty list of sources")
    unknown = set(doc) - {"datasets", "samples", "seed"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: datasets, samples, seed")
    base = Path(path).resolve().parent
    sources = []
    for i, entry in enumerate(doc["datasets"]):
        where = f"{path}: datasets[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with json_path (or path), got {type(entry).__name__}")
        bad = set(entry) - set(SOURCE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(SOURCE_KEYS)}")
        values = {SOURCE_KEYS[k]: v for k, v in entry.items()}
        if not isinstance(values.get("path"), str) or not values["path"]:
            raise ConfigError(f"{where}: no json_path (or path)")
        for key in ("path", "image_root"):
            if isinstance(values.get(key), str) and not os.path.isabs(values[key]) and (base / values[key]).exists():
                values[key] = str(base / values[key])
        values.setdefault("image_root", image_root)
        weight = values.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0):
            raise ConfigError(f"{where}: weight={weight!r} must be a number >= 0")
        values.setdefault("name", Path(values["path"]).name)
        sources.append(SourceSpec(**values))
    spec = MixtureSpec(sources, doc.get("samples"), int(doc.get("seed", 0) or 0))
    if spec.weighted and any(s.weight is None for s in sources):
        missing = [s.name for s in sources if s.weight is None]
        raise ConfigError(f"{path}: some sources have a weight and {', '.join(missing)} not; give every source one")
    if spec.weighted and sum(s.weight for s in sources) <= 0:
        raise ConfigError(f"{path}: the weights sum to 0")
    if spec.samples is not None and (not isinstance(spec.samples, int) or spec.samples < 1):
        raise ConfigError(f"{path}: samples={spec.samples!r} must be a whole number >= 1")
    return spec


def quotas(weights: list[float], total: int) -> np.ndarray:
    """round(w_k x total) per source, summing to `total` (largest remainders)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def mixture_plan(sizes: list[int], weights: list[float] | None, total: int | None, seed: int,
                 in_order: bool = False):
    """(source of each position, row within its source): concatenation without weights; else
    `quotas` rows per source, a seeded random order cycled when a source is oversampled.
    `in_order` (streams): the sources interleaved at random, each source's rows in stored order
    (whole passes, then a sorted random subset), so that each source is read sequentially."""
    rng = np.random.default_rng(seed)
    if in_order and weights is not None:
        total = sum(sizes) if total is None else total
        counts = quotas(weights, total)
        for k, (n, count) in enumerate(zip(sizes, counts)):
            if count and not n:
                raise ConfigError(f"mixture source {k} is empty but has weight {weights[k]}")
        source = rng.permutation(np.repeat(np.arange(len(sizes), dtype=np.int32), counts))
        row = np.zeros(len(source), dtype=np.int64)
        for k, (n, count) in enumerate(zip(sizes, counts)):
            if count:
                passes = [np.arange(n)] * (count // n) + [np.sort(rng.permutation(n)[: count % n])]
                row[source == k] = np.concatenate(passes)
        return source, row
    if weights is None:
        source = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        row = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if sizes else np.zeros(0, np.int64)
        if total is not None and total != len(source):
            pick = rng.permutation(len(source))[:total] if total <= len(source) else \
                np.resize(rng.permutation(len(source)), total)
            source, row = source[np.sort(pick)], row[np.sort(pick)]
        return source, row
    total = sum(sizes) if total is None else total
    counts = quotas(weights, total)
    sources, rows = [], []
    for k, (n, count) in enumerate(zip(sizes, counts)):
        if count and not n:
            raise ConfigError(f"mixture source {k} is empty but has weight {weights[k]}")
        cycles = [rng.permutation(n) for _ in range(-(-count // n))] if count else []
        rows.append((np.concatenate(cycles)[:count] if cycles else np.zeros(0, np.int64)).astype(np.int64))
        sources.append(np.full(count, k, dtype=np.int32))
    return np.concatenate(sources), np.concatenate(rows)


class MixtureDataset(Dataset):
    """Map-style sources mixed by a `mixture_plan`: position i is row `row[i]` of source
    `source[i]`. Samples keep their source's `where` (file and record) and take position i as
    their index (stage 1.5's mask keys). Skips of every source count in `skipped`."""

    def __init__(self, sources: list, names: list[str], weights: list[float] | None = None,
                 samples: int | None = None, seed: int = 0, in_order: bool = False):
        self.sources, self.names = sources, names
        self.source, self.row = mixture_plan([len(s) for s in sources], weights, samples, seed, in_order)
        self.skips = SkipLog(sources[0].skips.logger if sources and hasattr(sources[0], "skips") else None)

    @property
    def skips(self) -> SkipLog:
        return self._skips

    @skips.setter
    def skips(self, value: SkipLog) -> None:
        self._skips = value
        self.skipped = value.counts
        for s in self.sources:
            s.skips = value
            if hasattr(s, "skipped") and not isinstance(s, Subset):
                s.skipped = value.counts

    def __len__(self) -> int:
        return len(self.source)

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        return int(self.source[i]), int(self.row[i])

    def __getitem__(self, i: int):
        k, row = self.locate(int(i))
        item = self.sources[k][row]
        if isinstance(item, (Sample, Skipped)):
            item.index = int(i)
        return item

    def read_text(self, i: int):
        k, row = self.locate(int(i))
        sample = self.sources[k].read_text(row)
        if sample is not None:
            sample.index = int(i)
        return sample

    def _gather(self, lengths_of) -> np.ndarray | None:
        per_source = [lengths_of(s) for s in self.sources]
        if any(x is None for x in per_source):
            return None
        out = np.zeros(len(self), dtype=np.int32)
        for k, lengths in enumerate(per_source):
            mask = self.source == k
            out[mask] = np.asarray(lengths)[self.row[mask]]
        return out

    @property
    def stored_lengths(self):
        return self._gather(stored_lengths)

    @property
    def modality_lengths(self):
        return self._gather(lambda s: s.modality_lengths)

    def counts(self) -> dict[str, int]:
        """Samples per source in one epoch."""
        return {name: int((self.source == k).sum()) for k, name in enumerate(self.names)}


# -- the one call -------------------------------------------------------------------------------
def data_specs(data_path: str, image_root: str | None) -> MixtureSpec:
    """`data_path` as a mixture: a YAML, or comma-separated paths of one or more kinds (concatenated)."""
    paths = [p for p in str(data_path).split(",") if p]
    if not paths:
        raise ConfigError("data_path is empty: give a LLaVA JSON/JSONL file, a dataset folder, shards or a mixture YAML")
    if len(paths) == 1 and source_kind(paths[0]) == "mixture":
        return read_mixture(paths[0], image_root)
    if any(source_kind(p) == "mixture" for p in paths):
        raise ConfigError(f"data_path={data_path}: a mixture YAML cannot be combined with other paths")
    kinds = [source_kind(p) for p in paths]
    if all(k == "llava" for k in kinds):  # one LlavaDataset over several files, as before
        return MixtureSpec([SourceSpec(",".join(paths), "llava", image_root, name=paths[0])])
    return MixtureSpec([SourceSpec(p, k, image_root, name=Path(p).name) for p, k in zip(paths, kinds)])


def stream_mixture(sources: list, names: list[str], weights, samples, seed: int):
    """Streams (and map-style sources) mixed by weight, as one stream: a `MixtureDataset` over their
    stores whose rows come in stored order within each source (sequential reads), interleaved."""
    from victor.data.stream import StreamingDataset

    stores = [s.store if isinstance(s, StreamingDataset) else s for s in sources]
    mixture = MixtureDataset(stores, names, weights, samples, seed, in_order=True)
    return StreamingDataset(mixture, seed=seed)


def build_dataset(spec: MixtureSpec, max_image_pixels: int | None = MAX_IMAGE_PIXELS, seed: int | None = None,
                  group_by_modality: bool = False):
    """The dataset of a mixture spec; a stream if any source streams (then grouped by modality within
    its shuffle blocks when asked: the map-style path groups in the Trainer's sampler)."""
    seed = spec.seed if seed is None else seed
    sources = [open_source(s, max_image_pixels, seed + k) for k, s in enumerate(spec.sources)]
    weights = [s.weight for s in spec.sources] if spec.weighted else None
    names = [s.name for s in spec.sources]
    if any(getattr(s, "streaming", False) for s in sources):
        single = len(sources) == 1 and weights is None and spec.samples is None
        dataset = sources[0] if single else stream_mixture(sources, names, weights, spec.samples, seed)
        dataset.group_by_modality = group_by_modality
        return dataset
    if len(sources) == 1 and weights is None and spec.samples is None:
        return sources[0]
    return MixtureDataset(sources, names, weights, spec.samples, seed)


def make_dataset(data_args, seed: int = 0):
    """The training data of a recipe's DataArguments (see the module docstring)."""
    spec = data_specs(data_args.data_path, data_args.image_root)
    return build_dataset(spec, data_args.max_image_pixels, spec.seed + seed,
                         group_by_modality=getattr(data_args, "group_by_modality_length", False))


def probe_texts(dataset, seed: int, probe: int, n_visual: int = 0) -> list[Sample]:
    """Up to `probe` samples without images, for bounded checks before training (`check_lengths_fit`).

    Map-style: half in a seeded random order, half the shortest by the stored token-free lengths
    (fewest words, an image counted as `n_visual`) where the data stores them, so that a
    `max_length` some samples fit is not refused for want of probing them. Streaming sources
    give the first records of their stream (`probe_texts` of the dataset)."""
    import torch

    if hasattr(dataset, "probe_texts"):
        return dataset.probe_texts(probe)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:probe].tolist()
    lengths = stored_lengths(dataset)
    if lengths is not None and len(lengths) > probe:
        lengths = np.asarray(lengths, dtype=np.int64)
        cost = np.abs(lengths) + np.where(lengths > 0, n_visual, 0)
        shortest = np.argpartition(cost, probe // 2)[: probe // 2]
        shortest = shortest[np.argsort(cost[shortest], kind="stable")].tolist()
        order = list(dict.fromkeys(shortest + order))[:probe]
    return [s for s in map(dataset.read_text, order) if s is not None]
