"""Run one stage: assemble or load the model, apply the stage, train with HF Trainer, save."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import TrainerState, set_seed

from victor.config import ConfigError, Recipe, parse_recipe
from victor.data.collate import LlavaCollator
from victor.data.monitor import SkipMonitor
from victor.data.sources import make_dataset
from victor.model.assemble import (
    build_model,
    load_model,
    prepare_tokenizer,
    image_processor_for,
)
from victor.model.comprehension import VisualComprehension
from victor.model.comprehension_state import load_state
from victor.train.checkpoint import check_world_size, resolve_resume
from victor.train.lora import apply_lora
from victor.train.engine import (
    fsdp_requested,
    init_distributed,
    load_dtype,
    from_every_rank,
    one_activation_checkpointing,
    placeholder_batch,
    replica_mismatches,
    seed_pool_from_data,
    sum_across_ranks,
    uses_deepspeed,
)
from victor.data.skips import KEPT
from victor.train.preflight import check_lengths_fit, check_max_length, check_trained, preflight
from victor.train.stages import apply_freezing, resolve_stage
from victor.train.trainer import VictorTrainer, write_stage_record

log = logging.getLogger(__name__)


def make_model(model_args, dtype=None):
    model_args.validate()  # e.g. init_from, or both vision and llm
    if model_args.init_from:
        model, processor = load_model(model_args.init_from, dtype=dtype,
                                      attn_implementation=model_args.attn_implementation)
        if model_args.chat_template:
            prepare_tokenizer(processor.tokenizer, model_args.chat_template)
            processor.chat_template = processor.tokenizer.chat_template
        processor.image_processor = image_processor_for(processor.image_processor, model_args.image_aspect_ratio,
                                                        model_args.image_resample)
        return model, processor
    return build_model(
        model_args.vision,
        model_args.llm,
        tokenizer=model_args.tokenizer,
        vision_feature_layer=model_args.vision_feature_layer,
        vision_feature_select_strategy=model_args.vision_feature_select_strategy,
        normalize_projector=model_args.normalize_projector,
        chat_template=model_args.chat_template,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        image_aspect_ratio=model_args.image_aspect_ratio,
        image_resample=model_args.image_resample,
    )


def train_stage(recipe: Recipe, callbacks=None) -> str:
    """Train one stage; returns the output directory holding a stock LLaVA checkpoint."""
    model_args, data_args, stage_args = recipe.model, recipe.data, recipe.stage
    comp_args, training_args = recipe.comprehension, recipe.training
    stage = resolve_stage(stage_args.stage, stage_args.train_vision, stage_args.comprehension, data_args.template)
    if fsdp_requested(training_args) and (training_args.use_cpu or not torch.cuda.is_available()):
        raise ConfigError(fsdp_refusal(training_args, "a CPU run"))
    preflight(recipe, stage.comprehension)
    engine = "deepspeed" if uses_deepspeed(training_args) else "fsdp" if fsdp_requested(training_args) else "torch"
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir, engine)
    one_activation_checkpointing(training_args)
    dataset = make_dataset(data_args, training_args.seed)
    init_distributed(training_args)
    if resume:
        check_world_size(resume, engine, training_args.world_size)
    # everything random that exists before the Trainer (projector, pool, head) is built after seeding
    set_seed(training_args.seed)
    model, processor = make_model(model_args, dtype=load_dtype(training_args))
    check_max_length(data_args.max_length, model.config.image_seq_length)
    set_seed(training_args.seed)  # loading consumes randomness differently per engine (ZeRO-3's zero.Init)
    trained = VisualComprehension(model, comp_args, mask_seed=training_args.seed) if stage.comprehension else model
    if stage.comprehension and comp_args.pool_init == "checkpoint" and resume is None:
        head = trained.load_pool(load_state(model_args.init_from))
        log.info("pool from %s%s", model_args.init_from, " (and its head)" if head else "; a fresh head")
    counts = apply_freezing(trained, stage)
    counts = apply_lora(trained, stage, stage_args, counts)
    log.info("stage %s trains %s", stage.name, {k: v for k, v in counts.items() if v})

    collator = LlavaCollator(processor, model.config.image_seq_length, stage.template, data_args.max_length,
                             image_keys=stage.comprehension, batch_stats=True, blank_image=True)
    check_lengths_fit(dataset, collator, data_args.max_length, training_args.seed)
    if stage.comprehension and comp_args.pool_init == "tokens" and resume is None:
        seed_pool_from_data(trained, dataset, collator, training_args)
    training_args.remove_unused_columns = False
    trainer = VictorTrainer(
        model=trained,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        module_lrs={
            "projector": stage_args.projector_lr,
            "llm": stage_args.llm_lr,
            "vision": stage_args.vision_lr,
            "pool": comp_args.pool_lr,
            "head": comp_args.head_lr,
        },
        group_by_modality_length=data_args.group_by_modality_length,
        max_nonfinite_steps=stage_args.max_nonfinite_steps,
        loss_normalization=stage_args.loss_normalization,
        placeholder_batch=placeholder_batch(dataset, collator, "llm" in stage.trains, training_args.seed),
        skip_monitor=SkipMonitor(data_args.max_skip_fraction, window=data_args.skip_window,
                                 min_samples=min(100, data_args.skip_window)),
    )
    if fsdp_requested(training_args) and not trainer.is_fsdp_enabled:
        raise ConfigError(fsdp_refusal(training_args, trainer.accelerator.distributed_type))
    start_step = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json")).global_step if resume else 0
    result = trainer.train(resume_from_checkpoint=resume)
    skipped = sum_across_ranks(trainer.skip_monitor.counts())
    samples = sum_across_ranks({"n": trainer.skip_monitor.samples}).get("n", 0)
    if result.global_step > start_step:
        check_trained(samples, skipped, data_args.max_skip_fraction, KEPT)
    trainer.save_model(training_args.output_dir)
    mismatched = replica_mismatches(trainer.accelerator.unwrap_model(trainer.model_wrapped))
    text_only = from_every_rank(trainer.text_only_micro_batches)
    empty_batches = sum_across_ranks({"n": trainer.skip_monitor.empty_batches}).get("n", 0)
    log.info("stage %s: %d of %d planned steps; %d samples skipped %s", stage.name, result.global_step,
             trainer.state.max_steps, sum(n for r, n in skipped.items() if r != "truncated_text"), skipped)
    if mismatched:
        log.error("replicas differ between ranks after training: %s", mismatched[:10])
    if result.global_step < trainer.state.max_steps:
        raise RuntimeError(f"stage {stage.name} ended after {result.global_step} of {trainer.state.max_steps} "
                           f"planned steps; what it trained is saved in {training_args.output_dir}")
    if not training_args.should_save:
        return training_args.output_dir
    write_stage_record(
        training_args.output_dir,
        {
            "stage": stage.name,
            "trains": sorted(stage.trains),
            "template": stage.template,
            "comprehension": stage.comprehension,
            "trainable_parameters": counts,
            "skipped_samples": skipped,
            "empty_batches": empty_batches,
            "text_only_micro_batches": text_only,
            "empty_steps_skipped": trainer.nonfinite.empty_steps,
            "planned_steps": trainer.state.max_steps,
            "train_loss": result.training_loss,
            "world_size": training_args.world_size,
            "resumed_from": resume,
            "steps_run": result.global_step - start_step,
            "nonfinite_steps_skipped": trainer.nonfinite.skipped,
            "replicas_differ": mismatched,
            "log_history": trainer.state.log_history,
            "model": model_args,
            "data": data_args,
            "stage_args": stage_args,
            "comprehension_config": comp_args if stage.comprehension else None,
        },
    )
    return training_args.output_dir


def fsdp_refusal(training_args, how) -> str:
    asked = f"--fsdp {training_args.fsdp!r}" if training_args.fsdp else "FSDP (accelerate launch's FSDP config)"
    return (f"{asked} was asked for, but accelerate runs this job as {how}, without FSDP "
            "(on CPU the Trainer ignores --fsdp and would silently run plain DDP). Shard with DeepSpeed ZeRO-3 "
            "(--deepspeed recipes/deepspeed/zero3.json), or run FSDP on GPUs.")


def train_from_recipe(recipe: str | Path | None, overrides: list[str] | None = None) -> str:
    return train_stage(parse_recipe(recipe, overrides))
