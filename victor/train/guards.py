"""Guards that keep a long run from training on garbage: non-finite gradients skip the step.

Who decides depends on the engine, because the engines substitute the optimizer:

* torch optimizers (one process, DDP, FSDP): a step pre-hook on the optimizer that steps;
  one fused gradient norm and one all-reduce per optimizer step (the host sync it keeps).
* DeepSpeed ZeRO (stage 1-3, with or without offload): the engine steps its own optimizer
  (accelerate swaps ours for DeepSpeedCPUAdam under ZeRO-Offload, ZeRO wraps it and steps it
  once per parameter sub-group). ZeRO already computes the global gradient norm over every
  sub-group and rank before any sub-group steps, and skips the whole step when it is NaN/inf
  (`zero_optimization.compute_grad_norm`, on by default; in bf16 also `bf16.check_grad_overflow`,
  on by default): no partial steps, and its sync is the one decision. The guard counts those
  skips from the engine (`skipped_steps`), stops the run after too many in a row, and keeps a
  hook on the optimizer that really steps only for steps with no usable sample anywhere.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from victor.train.checkpoint import last_checkpoint

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def _collective_device(default: torch.device) -> torch.device:
    """NCCL reduces only CUDA tensors (gradients of an offloaded optimizer live on the CPU)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return default


def _max_across_ranks(flags: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


class NonFiniteGuard:
    """An optimizer step pre-hook: when any gradient is NaN/inf (on any rank), every gradient is
    dropped (`grad = None`, so the optimizer leaves parameters and moments untouched) and the
    step is counted as skipped; after `max_consecutive` skipped steps in a row the run stops,
    naming the newest complete checkpoint to resume from.

    One decision per optimizer step: the first call of a step decides (one fused norm, one
    all-reduce, so every rank skips the same steps); later calls in the same step (ZeRO steps
    its optimizer once per parameter sub-group) apply that decision without another sync.
    Under a DeepSpeed engine (`attach`), the engine's own non-finite check decides and the
    guard counts its skips (`engine_step_end`)."""

    def __init__(self, max_consecutive: int, output_dir: str, current_step=lambda: 0):
        self.max_consecutive, self.output_dir, self.current_step = max_consecutive, output_dir, current_step
        self.skipped = self.consecutive = self.empty_steps = 0
        self.had_data = False  # did any micro-batch of this optimizer step have a usable sample?
        self._step = self._decided = None
        self._skip = False  # the decision of the step `_decided`
        self.engine = None  # a DeepSpeed engine whose own check decides non-finite steps
        self._engine_skips = 0
        self.handles: dict[int, object] = {}  # id(optimizer) -> hook handle

    def note_batch(self, usable: bool) -> None:
        if self._step != self.current_step():
            self._step, self.had_data = self.current_step(), False
        self.had_data |= usable

    # -- where the guard sits ---------------------------------------------------------------------
    def hook(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self.handles:
            self.handles[id(optimizer)] = optimizer.register_step_pre_hook(self)

    def attach(self, optimizer: torch.optim.Optimizer | None, engine=None) -> str:
        """After the engine is set up: hook the optimizer that really steps; under DeepSpeed also
        follow the engine's skips. Returns the class that steps (for the log)."""
        if engine is not None:
            stepping = getattr(engine, "basic_optimizer", None) or optimizer
            self.engine, self._engine_skips = engine, int(getattr(engine, "skipped_steps", 0))
        else:
            stepping = optimizer
        if stepping is not None:
            self.hook(stepping)
        name = type(stepping).__name__
        log.info("non-finite guard on %s%s", name, " (DeepSpeed's own check decides NaN/inf steps)" if engine else "")
        return name

    # -- the decision ---------------------------------------------------------------------------
    def __call__(self, optimizer, args, kwargs) -> None:
        first_call = self._decided != self.current_step()
        if first_call:
            self._decided = self.current_step()
            self._skip = self._decide(optimizer)
        if self._skip:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def _decide(self, optimizer) -> bool:
        """True to skip this step. Counts it, and stops the run after too many non-finite in a row."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        device = _collective_device(grads[0].device if grads else torch.device("cpu"))
        if self.engine is not None:  # the engine checked the whole step's gradients before stepping
            nonfinite = torch.tensor(False)
        else:
            nonfinite = ~torch.isfinite(torch.nn.utils.get_total_norm(grads)) if grads else torch.tensor(False)
        # [not finite, had data]: one MAX all-reduce gives (any rank non-finite, any rank had data)
        flags = torch.stack([nonfinite.to(device, torch.float32), torch.tensor(float(self.had_data), device=device)])
        nonfinite, had_data = (bool(v) for v in _max_across_ranks(flags).tolist())
        if had_data and not nonfinite:
            self.consecutive = 0
            return False
        if not had_data:  # every micro-batch of every rank was empty: nothing to learn from
            self.empty_steps += 1
            log.warning("no usable sample in this step on any process: step skipped")
            return True
        self._count_nonfinite()
        return True

    def engine_step_end(self) -> None:
        """After each optimizer step of a DeepSpeed engine: count the steps it skipped as non-finite."""
        if self.engine is None:
            return
        total = int(getattr(self.engine, "skipped_steps", 0))
        new, self._engine_skips = total - self._engine_skips, total
        for _ in range(new):
            self._count_nonfinite()

    def _count_nonfinite(self) -> None:
        self.skipped += 1
        self.consecutive += 1
        log.warning("non-finite gradients: step skipped (%d in a row, %d in all)", self.consecutive, self.skipped)
        if self.consecutive > self.max_consecutive:
            resume = last_checkpoint(self.output_dir)
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had non-finite gradients (loss NaN/inf); stopped. "
                f"Resume from {resume or 'the start (no complete checkpoint yet)'} with a lower learning rate "
                f"or check the data; max_nonfinite_steps={self.max_consecutive}")


class GuardCallback(TrainerCallback):
    """Puts the guard on the optimizer the engine really steps (known only once the Trainer has
    prepared model and optimizer) and reads the engine's skips after every optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        engine = trainer.model_wrapped if getattr(trainer, "is_deepspeed_enabled", False) else None
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
        if engine is not None:
            optimizer = getattr(engine, "optimizer", optimizer)
        trainer.nonfinite.attach(optimizer, engine)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.nonfinite.engine_step_end()
