"""HF Trainer, composed with the stage: parameter groups, stage-1.5 losses, logging, saving.

What leaves a stage is a stock LLaVA checkpoint (+ processor with chat template) in
`output_dir`; in stage 1.5 the pool and head are written beside it in
`comprehension.safetensors` so the stage can resume, and never inside the LLaVA weights.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from victor.data.monitor import SkipMonitor
from victor.data.sampler import ModalityLengthGroupedSampler
from victor.data.stream import is_stream, resumed_stream, stream_dataloader
from victor.model.comprehension import VisualComprehension
from victor.model.comprehension_state import load_state
from victor.train.checkpoint import (
    check_full,
    full_shapes,
    load_llava_weights,
    load_state_into,
    mark_complete,
    rotate,
    split_state_dict,
)
from victor.train.guards import GuardCallback, NonFiniteGuard
from victor.train.objective import StepCounts, step_counts
from victor.train.lora import has_lora, llava_of, load_lora_llava, save_lora_llava
from victor.train.stages import MODULES, modules_of


class VictorTrainer(Trainer):
    def __init__(self, *args, module_lrs: dict[str, float | None] | None = None,
                 group_by_modality_length: bool = False, max_nonfinite_steps: int = 3,
                 skip_monitor: SkipMonitor | None = None, placeholder_batch: dict | None = None,
                 loss_normalization: str = "batch", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        self._counts = None  # objective.StepCounts of the current optimizer step
        self._terms: dict[str, torch.Tensor] = {}  # the objective's terms since the last log, as reported
        self._last_logged_step: int | None = None  # the step the reported terms start after (set on resume too)
        self.micro_batches = 0
        self.text_only_micro_batches: list[int] = []  # ordinals (1-based, this process) of micro-batches without images
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps, self.args.output_dir, lambda: self.state.global_step)
        self.add_callback(GuardCallback(self))  # re-hooks the guard where the engine put its own optimizer
        # checkpoints are marked complete and rotated by victor, after every process has written its part
        self.keep_checkpoints, self.args.save_total_limit = self.args.save_total_limit, None
        self.add_callback(CompleteCheckpoints(self))
        self.skip_monitor = skip_monitor or SkipMonitor(max_skip_fraction=1.0)
        self.placeholder_batch = placeholder_batch
        self.module_lrs = module_lrs or {}
        self.group_by_modality_length = group_by_modality_length
        self._extra_logs: dict[str, list[torch.Tensor]] = defaultdict(list)  # read at log time

    # -- data order -----------------------------------------------------------------------------
    def get_train_dataloader(self):
        """A stream splits itself across ranks and workers (victor.data.stream); the rest is the Trainer's."""
        if is_stream(self.train_dataset):
            return stream_dataloader(self)
        return super().get_train_dataloader()

    def get_resumed_dataloader(self, dataloader, num_batches):
        if is_stream(getattr(dataloader, "dataset", None)):
            return resumed_stream(dataloader, num_batches)
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _get_train_sampler(self, train_dataset=None):
        """LLaVA's modality- and length-grouped order when asked for (the Trainer's own samplers
        cannot keep a global batch to one modality); otherwise the Trainer's choice."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(dataset.modality_lengths, self.args.train_batch_size,
                                            self.args.world_size * self.args.gradient_accumulation_steps, seed)

    # -- optimisation -------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """One group per (module, decay) so every module can have its own learning rate."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        owner = modules_of(model)
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for module in MODULES:
            lr = self.module_lrs.get(module)
            lr = self.args.learning_rate if lr is None else lr
            for with_decay in (True, False):
                params = [p for n, p in model.named_parameters()
                          if p.requires_grad and owner[n] == module and (n in decay) == with_decay]
                if params:
                    groups.append({"params": params, "lr": lr, "module": module,
                                   "weight_decay": self.args.weight_decay if with_decay else 0.0})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self.nonfinite.hook(self.optimizer)
        return self.optimizer

    # -- steps ----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        """Counts the collator's skips (and stops above max_skip_fraction); a micro-batch with no
        usable sample runs `placeholder_batch` with its loss multiplied by zero, so every process
        joins the same forward/backward collectives and contributes nothing; a step with no data
        anywhere is skipped by the optimizer guard."""
        usable = self.skip_monitor.observe(inputs)
        self.micro_batches += 1
        if usable and self.skip_monitor.last_images == 0 and len(self.text_only_micro_batches) < 1000:
            self.text_only_micro_batches.append(self.micro_batches)
        self.nonfinite.note_batch(usable)
        self._placeholder_step = not usable
        if not usable:
            inputs = {k: v.clone() for k, v in self.placeholder_batch.items()}
        return super().training_step(model, inputs, num_items_in_batch)

    # -- loss -----------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step, and what each loss term is a mean over
        (`objective.step_counts`). Under `batch` normalisation the step's per-process answer-token
        count is handed on as `num_items_in_batch`; under `micro-batch`, None, and the Trainer
        divides each micro-batch's mean by the accumulation steps."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        core = self.accelerator.unwrap_model(self.model)
        recon_of = (lambda b: core.recon_items(b["input_ids"], b["attention_mask"])) \
            if isinstance(core, VisualComprehension) else None
        self._counts = step_counts(
            self.loss_normalization, num_items, batches, recon_of, self.args.world_size,
            self.args.average_tokens_across_devices, len(batches),
            gather_sum=lambda t: self.accelerator.gather(t.to(device).reshape(1)).sum())
        if self.loss_normalization == "micro-batch":
            return batches, None
        if isinstance(core, VisualComprehension):
            return batches, self._counts.lm_items
        return batches, num_items  # the stock model: Trainer.compute_loss does the same world scaling

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, out = self._compute_loss(model, inputs, num_items_in_batch)
        if getattr(self, "_placeholder_step", False):
            loss = loss * 0.0
        return (loss, out) if return_outputs else loss

    def _compute_loss(self, model, inputs, num_items_in_batch):
        core = self.accelerator.unwrap_model(model)
        if not isinstance(core, VisualComprehension):
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        counts = self._counts or StepCounts(None, None, 1.0)  # outside a training step (evaluation)
        out = model(**inputs, mask_step=self.state.global_step, num_items_in_batch=counts.lm_items,
                    num_recon_items=counts.recon_items)
        if model.training and not getattr(self, "_placeholder_step", False):
            self._note_terms(out, counts.report_share)
        return out["loss"], out

    def _note_terms(self, out: dict, share: float) -> None:
        """Add this micro-batch's part of the step's reported terms: summed over the step's
        micro-batches and the processes, `share` makes them what one big batch reports."""
        if self._last_logged_step is None:
            self._last_logged_step = self.state.global_step
        for key in ("lm_loss", "recon_loss"):
            value = out[key].detach().float() * share
            self._terms[key] = self._terms[key] + value if key in self._terms else value
        for key, value in out["stats"].items():
            self._extra_logs[key].append(value)

    def _reported_terms(self) -> dict[str, float]:
        """Per-step means of the terms since the last log, over all processes (one all-reduce)."""
        steps = max(1, self.state.global_step - (self._last_logged_step or 0))
        self._last_logged_step = self.state.global_step
        totals = torch.stack([self._terms.get(k, torch.zeros(())).reshape(()).float()
                              for k in ("lm_loss", "recon_loss")]).to(self.args.device)
        self._terms = {}
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return {"lm_loss": round(float(totals[0]) / steps, 6), "recon_loss": round(float(totals[1]) / steps, 6)}

    def _statistics(self) -> dict[str, float]:
        """Means of the forward's statistics since the last log. They are kept as device tensors
        on every micro-step and read by the host here, once per logging step (one copy)."""
        keys = list(self._extra_logs)
        device = next((v.device for vs in self._extra_logs.values() for v in vs if torch.is_tensor(v)), "cpu")
        means = torch.stack([torch.stack([torch.as_tensor(v).detach().to(device, torch.float32).reshape(())
                                          for v in self._extra_logs[k]]).mean() for k in keys])
        self._extra_logs.clear()
        return {k: round(v, 6) for k, v in zip(keys, means.tolist())}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and isinstance(self.accelerator.unwrap_model(self.model), VisualComprehension):
            logs.update(self._reported_terms())
        if "loss" in logs and self._extra_logs:
            logs.update(self._statistics())
        if "loss" in logs:
            logs["data/skipped"] = float(self.skip_monitor.skipped())
            logs.update({f"data/skipped/{reason}": float(n) for reason, n in self.skip_monitor.counts().items()})
            logs["train/nonfinite_steps_skipped"] = float(self.nonfinite.skipped)
        super().log(logs, *args, **kwargs)

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        """Stage 1.5: the LLaVA keys as a stock checkpoint, pool/head beside it; writer rank only.

        `state_dict` is what the engine gathered (ZeRO-3, FSDP); without one (DDP, one process)
        the live module is complete and is read directly.
        """
        core = self.accelerator.unwrap_model(self.model)
        if not isinstance(core, VisualComprehension) and not has_lora(core):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        live = core.state_dict()
        state_dict = {**live, **state_dict} if state_dict else live  # buffers are never partitioned
        check_full(state_dict, full_shapes(core), output_dir)
        llava_state, extra = split_state_dict(state_dict) if isinstance(core, VisualComprehension) else (state_dict, {})
        if has_lora(core):  # the base checkpoint and adapter/ (victor.train.lora)
            save_lora_llava(llava_of(core), llava_state, output_dir, safe_serialization=True)
        else:
            core.llava.save_pretrained(output_dir, state_dict=llava_state, safe_serialization=True)
        if extra:
            core.save_state(output_dir, extra)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume without DeepSpeed: weights straight into the live model (no second copy)."""
        core = self.accelerator.unwrap_model(model if model is not None else self.model)
        if has_lora(core):
            load_lora_llava(llava_of(core), resume_from_checkpoint)
        elif hasattr(llava_of(core), "model") and hasattr(llava_of(core).model, "multi_modal_projector"):
            # a plain LLaVA (stages 1 and 2) too: the Trainer's own loader maps none of the saved names
            # of a model loaded with `_weight_conversions = None` and restores nothing
            load_llava_weights(llava_of(core), resume_from_checkpoint)
        else:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if isinstance(core, VisualComprehension):
            load_state_into(core, load_state(resume_from_checkpoint), resume_from_checkpoint)

class CompleteCheckpoints(TrainerCallback):
    """After the Trainer has written `checkpoint-N` (every process: weights, optimizer, scheduler,
    RNG, trainer state), wait for all processes, write the completion marker on the writer, and
    only then rotate older checkpoints away (`checkpoint.rotate`; the Trainer's own rotation is
    off, since it runs before the other processes finish). A kill at any moment leaves the
    newest complete checkpoint in place for `resume auto`."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer.accelerator.wait_for_everyone()
        if args.should_save:
            directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            mark_complete(directory, state.global_step)
            rotate(args.output_dir, trainer.keep_checkpoints, state.best_model_checkpoint)
        trainer.accelerator.wait_for_everyone()


def write_stage_record(output_dir: str, record: dict) -> None:
    """`victor_stage.json`: every argument of the stage, so a run can be reproduced or compared."""
    def plain(v):
        return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)

    Path(output_dir, "victor_stage.json").write_text(
        json.dumps({k: ({kk: plain(vv) for kk, vv in asdict(v).items()} if hasattr(v, "__dataclass_fields__")
                        else plain(v)) for k, v in record.items()}, indent=2)
    )
