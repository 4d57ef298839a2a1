"""Guards that keep a long run from training on garbage: non-finite gradients skip the step."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from victor.train.checkpoint import last_checkpoint

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """An optimizer step pre-hook: when any gradient is NaN/inf (on any rank), every gradient is
    dropped (`grad = None`, so the optimizer leaves parameters and moments untouched) and the
    step is counted as skipped; after `max_consecutive` skipped steps in a row the run stops,
    naming the newest complete checkpoint to resume from.

    One fused norm over the gradients per step; under DDP/DeepSpeed one all-reduce, so every
    rank skips the same steps."""

    def __init__(self, max_consecutive: int, output_dir: str, current_step=lambda: 0):
        self.max_consecutive, self.output_dir, self.current_step = max_consecutive, output_dir, current_step
        self.skipped = self.consecutive = self.empty_steps = 0
        self.had_data = False  # did any micro-batch of this optimizer step have a usable sample?
        self._step = self._decided = None

    def note_batch(self, usable: bool) -> None:
        if self._step != self.current_step():
            self._step, self.had_data = self.current_step(), False
        self.had_data |= usable

    def __call__(self, optimizer, args, kwargs) -> None:
        """Called once per optimizer.step(); DeepSpeed's ZeRO calls it once per parameter group,
        so the decision is counted once per training step and applied to every call."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads)) if grads else torch.tensor(True)
        # [not finite, had data]: one MAX all-reduce gives (any rank non-finite, any rank had data)
        flags = torch.tensor([0.0 if bool(finite) else 1.0, float(self.had_data)], device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, had_data = bool(flags[0].item()), bool(flags[1].item())
        first_call = self._decided != self.current_step()
        self._decided = self.current_step()
        if had_data and not nonfinite:
            self.consecutive = 0 if first_call else self.consecutive
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        if not first_call:
            return
        if not had_data:  # every micro-batch of every rank was empty: nothing to learn from
            self.empty_steps += 1
            log.warning("no usable sample in this step on any process: step skipped")
            return
        self.skipped += 1
        self.consecutive += 1
        log.warning("non-finite gradients: step skipped (%d in a row, %d in all)", self.consecutive, self.skipped)
        if self.consecutive > self.max_consecutive:
            resume = last_checkpoint(self.output_dir)
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had non-finite gradients (loss NaN/inf); stopped. "
                f"Resume from {resume or 'the start (no complete checkpoint yet)'} with a lower learning rate "
                f"or check the data; max_nonfinite_steps={self.max_consecutive}")
