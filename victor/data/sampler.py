"""Modality- and length-grouped batching: LLaVA's `group_by_modality_length`, for the HF Trainer.

The Trainer's own `group_by_length` knows nothing of modalities, so this sampler reproduces the
authors' order (LLaVA / Croc / ViCToR `get_modality_length_grouped_indices`):

* a *megabatch* is one optimizer step's worth of samples on all devices:
  `groups = world_size x gradient_accumulation_steps` micro-batches of `batch_size`;
* image records and text-only records are ordered separately (random order, cut into
  megabatches, each megabatch sorted by length and dealt into `groups` micro-batches of equal
  size whose total lengths are balanced), so every full megabatch is all-image or all-text;
* the full megabatches of both modalities are shuffled together; the two remainders form one
  mixed megabatch at the end.

"Grouped by length" therefore means balanced across the devices and accumulation steps of one
global batch, as in the authors' code, not sorted across the whole data set.

The sampler yields the whole order, identical on every rank (seeded by `seed + epoch`); the
Trainer's accelerate data loader deals consecutive micro-batches to the ranks in turn, so each
run of `groups` micro-batches is exactly one megabatch, whatever the number of processes.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def balanced_chunks(indices: list[int], lengths: list[int], n_chunks: int) -> list[list[int]]:
    """Deal `indices` (longest first) into `n_chunks` equal-size chunks, each to the chunk with the
    smallest total length so far; a strided split if they do not divide evenly."""
    if len(indices) % n_chunks:
        return [indices[i::n_chunks] for i in range(n_chunks)]
    size = len(indices) // n_chunks
    chunks: list[list[int]] = [[] for _ in range(n_chunks)]
    totals = [0.0] * n_chunks
    for i in indices:
        k = totals.index(min(totals))
        chunks[k].append(i)
        totals[k] = math.inf if len(chunks[k]) == size else totals[k] + lengths[i]
    return chunks


def length_grouped(lengths: list[int], batch_size: int, groups: int, generator: torch.Generator) -> list[int]:
    """A random order, cut into megabatches of `batch_size x groups`, each sorted and balanced."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * groups
    out: list[int] = []
    for start in range(0, len(order), mega):
        block = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        out += [i for chunk in balanced_chunks(block, lengths, groups) for i in chunk]
    return out


def modality_grouped(lengths: list[int], batch_size: int, groups: int, generator: torch.Generator) -> list[int]:
    """Indices ordered so that each megabatch is one modality (`lengths` > 0: image, < 0: text)."""
    sizes = [abs(n) for n in lengths]
    image = [i for i, n in enumerate(lengths) if n > 0]
    text = [i for i, n in enumerate(lengths) if n < 0]
    if not image or not text:
        return length_grouped(sizes, batch_size, groups, generator)
    mega = batch_size * groups
    blocks: list[list[int]] = []
    rest: list[int] = []
    for members in (image, text):
        order = [members[j] for j in length_grouped([sizes[i] for i in members], batch_size, groups, generator)]
        cut = [order[k:k + mega] for k in range(0, len(order), mega)]
        blocks += cut[:-1]
        rest += cut[-1]  # as in the authors' code: the last block of each modality goes to the mixed tail
    shuffled = torch.randperm(len(blocks), generator=generator).tolist()
    return [i for b in shuffled for i in blocks[b]] + sorted(rest)


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler over a data set with per-record `lengths` (> 0 image, < 0 text-only)."""

    def __init__(self, lengths: list[int], batch_size: int, groups: int, seed: int = 0):
        if any(n == 0 for n in lengths):
            raise ValueError("modality lengths must be non-zero: > 0 for image records, < 0 for text-only ones")
        lengths = lengths.tolist() if hasattr(lengths, "tolist") else list(lengths)  # an index's int32 array
        self.lengths, self.batch_size, self.groups, self.seed = lengths, batch_size, max(1, groups), seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped(self.lengths, self.batch_size, self.groups, generator))
