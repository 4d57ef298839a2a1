"""The normalisation constants of the training objective, supplied from the engine's view of
the step (docs/method.md). The model's forward computes every term with the constants it is
given; nothing else adjusts the loss.

`batch` (the default): each term is a mean over the whole global batch (answer tokens for
the language-model term, reconstructed visual positions for the reconstruction term), the
same objective for any split into micro-batches x accumulation steps x processes. The
engines average gradients over processes, so the counts are given divided by the world size
(a rank's loss is then world x its share of the global mean, as in `Trainer.compute_loss`).

`micro-batch` (the authors' code, so the published recipes): no counts; each micro-batch is
its own mean, the Trainer divides by the accumulation steps and the engines average over
processes. The one declared exception to split invariance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NORMALISATIONS = ("batch", "micro-batch")


@dataclass(frozen=True)
class StepCounts:
    """What one optimizer step's terms are means over, per process (None: each micro-batch's own)."""

    lm_items: torch.Tensor | None
    recon_items: torch.Tensor | None
    report_share: float  # one micro-batch's term x this, summed over the step and the processes = the reported value


def step_counts(mode: str, lm_items, batches: list[dict], recon_items_of, world: int, across_devices: bool,
                accumulation: int, gather_sum=None) -> StepCounts:
    """The constants for one optimizer step. `lm_items` is the Trainer's count of answer tokens
    (already summed over processes when `across_devices`); `recon_items_of(batch)` counts one
    micro-batch's reconstructed positions (None where the stage has no reconstruction);
    `gather_sum` sums a tensor over processes."""
    if mode == "micro-batch" or lm_items is None:
        return StepCounts(None, None, 1.0 / (world * max(1, accumulation)))
    recon = None
    if recon_items_of is not None:
        recon = sum((recon_items_of(b) for b in batches), torch.tensor(0))
        if across_devices and world > 1:
            recon = gather_sum(recon)
    divide = world if across_devices else 1
    return StepCounts(lm_items / divide, None if recon is None else recon / divide, 1.0 / world)
