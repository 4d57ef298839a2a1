"""Streaming: shards (and parquet) read in a streaming order, split across ranks and workers.

What the map-style path gets from random access and a length, a stream gets here:

* **Order.** An epoch is the sources' parts (shards, parquet row groups, chunks of a mixture)
  in a seeded order (`seed + epoch`); rank r reads one contiguous stretch of it
  (`split.rank_share`), in *blocks* of `shuffle_block` samples shuffled within the block (the
  shuffle buffer). Every read is a seek to a stored byte range or row: no rank reads another's
  samples, and nothing before the resume point is read again.
* **The same number of steps on every rank.** Each rank gets `ceil(N / world)` slots; a rank
  with one sample fewer gets one *padding* slot (`skips.Padding`) at its very end, which the
  collator drops: it is not a sample, not a skip, and a micro-batch of padding only runs the
  Trainer's placeholder batch (loss x 0). No sample is repeated, none is lost; the padding is
  counted in each batch's statistics (`padding`). With world = 1 there is none.
* **Workers.** Batch j of a rank goes to DataLoader worker (j - first) mod workers, which is the
  order a DataLoader takes batches from its workers: the rank sees its batches in slot order,
  whatever the number of workers (`split.worker_batches`).
* **Step count.** `len()` is the rank's slot count, so the DataLoader, and the Trainer's epochs,
  schedule and `max_steps`, have a length: the shard index knows it (`shards.json`).
* **Resume.** The Trainer's `get_resumed_dataloader` hook tells the dataset how many batches of
  the epoch are done; its workers start at the next batch (`skip_batches`), reading nothing
  before it: a killed run resumed from a checkpoint sees the same samples as an uninterrupted one.
* **Grouping by modality.** With `group_by_modality_length`, each block is dealt into
  micro-batches that are all-image or all-text (stored lengths), the micro-batches shuffled; the
  leftovers of each modality end the block.
* **Placeholder batch, pool seeding, the length probe.** A stream also reads by position
  (`dataset[i]`, `read_text(i)`, `stored_lengths`), so these run on every rank over the same
  records as on the map-style path.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from torch.utils.data import IterableDataset

from victor.data import split
from victor.data.llava import DataFormatError, LlavaDataset
from victor.data.skips import Padding

log = logging.getLogger(__name__)
CHUNK = 4096  # positions per part where a source has no parts of its own (a mixture)


class StreamingDataset(IterableDataset):
    """A random-access record store (`LlavaDataset` over shard or parquet records, or a
    `MixtureDataset`) read as a stream: see the module docstring."""

    streaming = True

    def __init__(self, store, parts=None, seed: int = 0, shuffle: bool = True, shuffle_block: int = 1024,
                 group_by_modality: bool = False, batch_size: int = 1, reader: split.Reader | None = None):
        self.store = store
        self.parts = np.asarray(parts if parts is not None else chunked(len(store)), dtype=np.int64)
        if int(self.parts.sum()) != len(store):
            raise ValueError(f"parts sum to {int(self.parts.sum())}, the store has {len(store)} samples")
        self.seed, self.shuffle, self.shuffle_block = seed, shuffle, max(1, shuffle_block)
        self.group_by_modality = group_by_modality
        self.batch_size = batch_size
        self.reader = reader  # fixed (tests, tools); None: from torch.distributed and the DataLoader worker
        self.epoch = 0
        self.skip_batches = 0
        self._skip_epoch: int | None = None

    # -- the map-style face: peeks, probes, placeholder, pool seeding ----------------------------
    @property
    def samples(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int):
        return self.store[index]

    def read_text(self, index: int):
        return self.store.read_text(index)

    @property
    def stored_lengths(self):
        return getattr(self.store, "stored_lengths", None)

    @property
    def skips(self):
        return self.store.skips

    @skips.setter
    def skips(self, value):
        self.store.skips = value
        if hasattr(self.store, "skipped"):
            self.store.skipped = value.counts

    @property
    def skipped(self):
        return self.store.skipped

    # -- the stream ------------------------------------------------------------------------------
    def current_reader(self) -> split.Reader:
        return self.reader if self.reader is not None else split.current_reader()

    def __len__(self) -> int:
        """Slots of this rank (samples + padding): the same on every rank."""
        reader = self.current_reader()
        return split.rank_share(len(self.store), reader.rank, reader.world)[2]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.skip_batches and self._skip_epoch is None:
            self._skip_epoch = epoch

    def resume(self, batches: int) -> None:
        """The epoch about to start has `batches` of this rank's batches done already."""
        self.skip_batches, self._skip_epoch = batches, None

    def block_size(self) -> int:
        """`shuffle_block` rounded up to whole batches, so that no batch straddles two blocks."""
        return math.ceil(self.shuffle_block / self.batch_size) * self.batch_size

    def epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(part of each epoch position's stretch, first stored position of each part, in epoch order)."""
        part_starts = np.concatenate([[0], np.cumsum(self.parts)[:-1]])
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.parts)) if self.shuffle else \
            np.arange(len(self.parts))
        return np.concatenate([[0], np.cumsum(self.parts[order])]), part_starts[order]

    def stored_position(self, position: int, layout) -> int:
        bounds, starts = layout
        k = int(np.searchsorted(bounds, position, side="right")) - 1
        return int(starts[k] + position - bounds[k])

    def block_order(self, epoch: int, rank: int, block: int, first: int, count: int, layout) -> np.ndarray:
        """Epoch positions of one block of a rank, in the order they are served."""
        positions = np.arange(first, first + count)
        if not self.shuffle:
            return positions
        rng = np.random.default_rng([self.seed, epoch, rank, block, 1])
        lengths = self.stored_lengths
        if not self.group_by_modality or lengths is None:
            return positions[rng.permutation(count)]
        stored = np.array([self.stored_position(int(p), layout) for p in positions])
        image = np.asarray(lengths)[stored] > 0
        groups, rest = [], []
        for members in (positions[image], positions[~image]):
            members = members[rng.permutation(len(members))]
            full = len(members) // self.batch_size * self.batch_size
            groups += [members[i:i + self.batch_size] for i in range(0, full, self.batch_size)]
            rest.append(members[full:])
        served = [groups[i] for i in rng.permutation(len(groups))] + rest
        return np.concatenate(served) if served else positions

    def slots(self, epoch: int, reader: split.Reader, start_batch: int = 0):
        """(slot, stored position or None for padding) of this reader's batches, batch by batch."""
        start, count, total = split.rank_share(len(self.store), reader.rank, reader.world)
        layout = self.epoch_layout(epoch)
        size = self.block_size()
        cached: tuple[int, np.ndarray] | None = None
        for batch in split.worker_batches(total, self.batch_size, reader.worker, reader.workers, start_batch):
            for slot in range(batch * self.batch_size, min((batch + 1) * self.batch_size, total)):
                if slot >= count:
                    yield slot, None
                    continue
                block = slot // size
                if cached is None or cached[0] != block:
                    first = block * size
                    cached = (block, self.block_order(epoch, reader.rank, block, start + first,
                                                      min(size, count - first), layout))
                yield slot, self.stored_position(int(cached[1][slot - block * size]), layout)

    def __iter__(self):
        reader = self.current_reader()
        skip = self.skip_batches if self._skip_epoch in (None, self.epoch) else 0
        for _, position in self.slots(self.epoch, reader, skip):
            yield Padding() if position is None else self.store[position]


def chunked(n: int, size: int = CHUNK) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)] or [0]


# -- sources ----------------------------------------------------------------------------------
def open_stream(spec, max_image_pixels, seed: int):
    """A StreamingDataset for a `SourceSpec` of kind shards or parquet-stream."""
    kind = spec.kind or "shards"
    if kind == "shards":
        from victor.data.shards import ShardRecords

        records = ShardRecords(spec.path)
    elif kind == "parquet-stream":
        from victor.data.parquet import ParquetRecords

        records = ParquetRecords(spec.path, spec.columns or None)
    else:
        raise DataFormatError(f"{spec.path}: {kind} does not stream")
    store = LlavaDataset([], spec.image_root, max_image_pixels, records=records)
    if spec.sampling_strategy not in ("all", "", None):
        raise DataFormatError(f"{spec.path}: sampling_strategy={spec.sampling_strategy!r} on a stream; use weights")
    return StreamingDataset(store, records.parts, seed=seed)


# -- the Trainer's side -----------------------------------------------------------------------
def is_stream(dataset) -> bool:
    return bool(getattr(dataset, "streaming", False))


def stream_dataloader(trainer):
    """The training DataLoader of a stream: the dataset splits itself across ranks and workers, so
    accelerate must neither shard it again nor dispatch batches from rank 0; it still wraps it
    (device placement, the end-of-data signal for gradient accumulation)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    args, dataset = trainer.args, trainer.train_dataset
    dataset.batch_size = trainer._train_batch_size
    dataset.set_epoch(0)
    kwargs = {"num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
              "persistent_workers": False,  # workers take the epoch (and the resume point) when they start
              "drop_last": args.dataloader_drop_last}
    if args.dataloader_num_workers > 0:
        kwargs["prefetch_factor"] = args.dataloader_prefetch_factor
        kwargs["multiprocessing_context"] = args.dataloader_multiprocessing_context
    loader = DataLoader(dataset, batch_size=trainer._train_batch_size, collate_fn=trainer.data_collator, **kwargs)
    prepared = prepare_data_loader(loader, device=args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False, non_blocking=args.dataloader_pin_memory)
    trainer.accelerator._dataloaders.append(prepared)
    return prepared


def resumed_stream(dataloader, num_batches: int):
    """`Trainer.get_resumed_dataloader` for a stream: the workers start at batch `num_batches`."""
    dataloader.dataset.resume(num_batches)
    return dataloader

