"""Typed configuration: the dataclasses a YAML recipe and the command line map onto.

A recipe is a flat YAML mapping whose keys are fields of the dataclasses below or of
`transformers.TrainingArguments`. `victor train recipe.yaml --max_steps 50` parses the recipe
first and the command line after it, so the command line wins. Choices are `Literal` types,
so `victor train --help` lists them and a wrong value is refused before anything is loaded.
Inside the package, options change through `Recipe.replace(name=value)`: typed values, no
command-line strings.

Every rule about option *values* (choices, ranges, combinations within one dataclass) lives
here, once: each dataclass's `validate`, all of them through `Recipe.validate`, which
`victor.train.preflight` runs first, before it checks what the options point at (files,
checkpoints, kernels) and before any weight is loaded.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments

PoolInit = Literal["tokens", "unit", "paper", "checkpoint"]
Matching = Literal["hungarian", "nearest"]
Attention = Literal["causal", "bidirectional-visual", "prefix"]
ReconHead = Literal["linear", "transformer"]
ReconTarget = Literal["projector", "vision"]
ReconPositions = Literal["all", "masked"]
StageName = Literal["1", "1.5", "2"]
Template = Literal["plain", "chat"]
LossNormalization = Literal["batch", "micro-batch"]
FeatureSelect = Literal["default", "full"]
AspectRatio = Literal["pad", "native"]
Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]

ATTENTION_MODES: tuple[str, ...] = get_args(Attention)
POOL_INITS: tuple[str, ...] = get_args(PoolInit)
MATCHERS: tuple[str, ...] = get_args(Matching)


class ConfigError(ValueError):
    """A recipe or command-line option that cannot run; the message names the option."""


def check_choices(options) -> None:
    """Every `Literal` field of a dataclass holds one of its choices (typed calls bypass argparse)."""
    for name, hint in get_type_hints(type(options)).items():
        allowed = get_args(hint)
        if get_origin(hint) is Literal or (type(None) in allowed and any(get_origin(a) is Literal for a in allowed)):
            choices = [c for a in allowed for c in (get_args(a) if get_origin(a) is Literal else (a,))]
            choices = [c for c in choices if c is not type(None)] + ([None] if type(None) in allowed else [])
            if getattr(options, name) not in choices:
                raise ConfigError(f"{name}={getattr(options, name)!r}; choose one of "
                                  f"{', '.join(str(c) for c in choices)}")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ModelArguments:
    vision: str | None = _opt(None, "vision encoder: hub id or directory (CLIP, SigLIP, ...)")
    llm: str | None = _opt(None, "causal LM: hub id or directory (Llama, Qwen2, ...)")
    tokenizer: str | None = _opt(None, "tokenizer hub id or directory; defaults to the LLM's")
    init_from: str | None = _opt(None, "a previous stage's output directory (replaces vision + llm)")
    vision_feature_layer: int = _opt(-2, "encoder layer whose features feed the projector")
    vision_feature_select_strategy: FeatureSelect = _opt("default", "default: drop the CLS token; full: keep it")
    normalize_projector: bool = _opt(False, "L2-normalise projector outputs per token (both published recipes)")
    chat_template: str | None = _opt(
        None, "'vicuna' (Vicuna v1), 'chatml' (LLaVA-NeXT's qwen_1_5), a Jinja template string, "
              "or (unset) the tokenizer's own")
    attn_implementation: str = _opt("sdpa", "eager | sdpa | flex_attention | flash_attention_2")
    image_aspect_ratio: AspectRatio | None = _opt(
        None, "pad: pad each image to a square with the encoder's mean colour, then resize (LLaVA's `pad`: "
              "nothing is cropped); native: the encoder's own processor (CLIP: resize the short side and "
              "centre-crop); unset: keep init_from's processor, or the encoder's own. Saved with the checkpoint")
    image_resample: Resample | None = _opt(
        None, "the image processor's resize filter; unset: keep init_from's processor's, or the encoder's published "
              "one. ViCToR's code resizes bicubic whatever the encoder publishes. Saved with the checkpoint")

    def validate(self) -> None:
        """Raise a ConfigError naming the option for a value no run can use."""
        check_choices(self)
        if not self.init_from and not (self.vision and self.llm):
            raise ConfigError("set init_from (a previous stage's output) or both vision and llm "
                              "(hub ids or directories)")


@dataclass
class DataArguments:
    data_path: str = _opt("", "LLaVA conversation JSON/JSONL file(s), comma-separated; or a Hugging Face dataset "
                              "(parquet/arrow/save_to_disk folder), shards from `victor data shard`, or a mixture "
                              "YAML (victor.data.sources)")
    image_root: str | None = _opt(None, "folder the records' image paths are relative to")
    max_length: int = _opt(2048, "tokens per sample; longer samples are cut after their last image")
    template: Template | None = _opt(None, "plain | chat; defaults to the stage's")
    max_skip_fraction: float = _opt(0.1, "stop when more than this share of the recent samples were unusable "
                                          "(missing images, broken records, ...); 1.0 never stops")
    skip_window: int = _opt(1000, "how many recent samples max_skip_fraction looks at")
    max_image_pixels: int = _opt(40_000_000, "images with more pixels are refused (decompression bombs)")
    group_by_modality_length: bool = _opt(
        False, "every global batch all-image or all-text, its samples balanced by length across devices and "
               "accumulation steps (LLaVA's group_by_modality_length)")

    def validate(self) -> None:
        """Raise a ConfigError naming the option for a value no run can use."""
        check_choices(self)
        if not [f for f in self.data_path.split(",") if f]:
            raise ConfigError("data_path is empty: give one or more LLaVA JSON/JSONL files (comma-separated), a "
                              "dataset folder, shards or a mixture YAML")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"max_skip_fraction={self.max_skip_fraction} must be in [0, 1]")
        for name in ("skip_window", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} must be >= 8")


@dataclass
class StageArguments:
    stage: StageName = _opt("1", "1: projector alignment, 1.5: visual comprehension, 2: instruction tuning")
    train_vision: bool = _opt(False, "also train the vision tower (ViCToR, stages 1.5 and 2)")
    comprehension: bool = _opt(True, "stage 1.5 only; False runs the plain detailed-caption baseline")
    projector_lr: float | None = _opt(None, "projector learning rate (unset: learning_rate)")
    llm_lr: float | None = _opt(None, "LLM learning rate (unset: learning_rate)")
    vision_lr: float | None = _opt(None, "vision tower learning rate (unset: learning_rate)")
    loss_normalization: LossNormalization = _opt(
        "batch", "batch: every loss term is a mean over the whole global batch (answer tokens; reconstructed "
                 "visual positions), the same objective for any split into micro-batches, accumulation steps and "
                 "processes; micro-batch: each micro-batch's own mean, divided by the accumulation steps and "
                 "averaged over processes (the authors' code, so the published recipes)")
    max_nonfinite_steps: int = _opt(3, "optimizer steps with NaN/inf gradients are skipped; this many in a row "
                                       "stop the run, naming the checkpoint to resume from")
    lora_r: int = _opt(0, "LoRA rank for the LLM's linear layers (stages 1.5 and 2; 0: train the LLM in full); "
                          "the projector, pool and head still train in full; `victor merge` folds the adapter in")
    lora_alpha: float = _opt(16.0, "LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    lora_target_modules: str = _opt("all-linear", "all-linear (every linear layer of the LLM but its output head) "
                                                  "or comma-separated layer names, e.g. q_proj,v_proj")
    lora_vision: bool = _opt(False, "also put adapters on the vision tower's linear layers (never by default)")

    def validate(self) -> None:
        """Raise a ConfigError naming the option for a value no run can use."""
        check_choices(self)
        for name in ("projector_lr", "llm_lr", "vision_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be > 0")
        if self.lora_r and self.stage == "1":  # stage 1 trains the projector only (victor.train.stages)
            raise ConfigError(f"lora_r={self.lora_r}: stage 1 does not train the LLM; LoRA is for stages 1.5 and 2")


@dataclass
class ComprehensionConfig:
    """Stage 1.5 (ViCToR / Croc): every setting of the method, its learning rates included."""

    pool_size: int = _opt(2048, "rows of the learnable visual token pool")
    pool_init: PoolInit = _opt(
        "tokens", "tokens: rows seeded from real projected visual tokens; unit: random unit rows; "
                  "paper: the published standard-normal init (degenerate matching); checkpoint: the rows (and "
                  "a head of the same kind) in init_from's comprehension.safetensors, to continue a stage 1.5 "
                  "or a converted release")
    pool_lr: float | None = _opt(1.5e-4, "pool learning rate (the published 1.5e-4; unset: learning_rate)")
    head_lr: float | None = _opt(None, "reconstruction head learning rate (unset: learning_rate)")
    mask_ratio: float = _opt(0.75, "share of each image's visual tokens replaced by pool rows, in (0, 1]")
    matching: Matching = _opt("hungarian", "hungarian: exact one-to-one minimum cost; nearest: per-token argmin")
    attention: Attention = _opt(
        "causal", "causal; bidirectional-visual: each image's tokens see each other (Croc paper); "
                  "prefix: the whole prompt before the first answer token is bidirectional (Croc code)")
    recon_head: ReconHead = _opt("linear", "linear (ViCToR) | transformer: one layer + positions + linear (Croc)")
    recon_head_dropout: float = _opt(0.1, "dropout of the transformer head's BERT layer (the authors' 0.1); 0 makes "
                                          "the head deterministic in training")
    recon_target: ReconTarget = _opt("projector", "projector: normalised projector output | vision: encoder features")
    recon_positions: ReconPositions = _opt("all", "all visual positions (published) | masked ones only")
    recon_weight: float = _opt(10.0, "weight of the reconstruction loss")
    recon_beta: float = _opt(0.01, "SmoothL1 beta of the reconstruction loss")

    def validate(self, n_visual: int | None = None) -> None:
        """Raise a configuration error before training starts, never mid-run; with `n_visual` (the
        model's visual tokens per image) also when the pool cannot serve them (`check_visual_tokens`)."""
        check_choices(self)
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ConfigError(f"mask_ratio={self.mask_ratio} must be in (0, 1]")
        if not 0.0 <= self.recon_head_dropout < 1.0:
            raise ConfigError(f"recon_head_dropout={self.recon_head_dropout} must be in [0, 1)")
        if self.pool_size < 1:
            raise ConfigError(f"pool_size={self.pool_size} must be >= 1")
        for name in ("recon_weight", "recon_beta", "pool_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name}={value} must be a finite number >= 0")
        if n_visual is not None:
            self.check_visual_tokens(n_visual)

    def check_visual_tokens(self, n_visual: int) -> None:
        """Hungarian matching is one-to-one: the pool needs a row for every masked token of an image."""
        n_masked = self.masked_count(n_visual)
        if self.matching == "hungarian" and self.pool_size < n_masked:
            raise ConfigError(
                f"Hungarian matching is one-to-one: the pool has {self.pool_size} rows but "
                f"{n_masked} of {n_visual} visual tokens per image are masked; raise pool_size "
                f"to >= {n_masked} or lower mask_ratio"
            )

    def masked_count(self, n_visual: int) -> int:
        return max(1, round(self.mask_ratio * n_visual))


ARGUMENT_CLASSES = (ModelArguments, DataArguments, StageArguments, ComprehensionConfig, TrainingArguments)


@dataclass(frozen=True)
class Recipe:
    """One stage's whole configuration, as parsed from a recipe and its overrides."""

    model: ModelArguments
    data: DataArguments
    stage: StageArguments
    comprehension: ComprehensionConfig
    training: TrainingArguments

    def validate(self, comprehension: bool) -> None:
        """Every option's own rules, dataclass by dataclass (`validate` of each), before anything is
        loaded; a ConfigError names the option. `comprehension`: whether the stage runs stage 1.5's
        method; when it does not, its settings (unused) only have to be valid choices."""
        self.model.validate()
        self.data.validate()
        self.stage.validate()
        if comprehension:
            self.comprehension.validate()
        else:
            check_choices(self.comprehension)

    def replace(self, **changes) -> Recipe:
        """A copy with options changed by name, each routed to the dataclass that owns it."""
        parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        owners = {f.name: part for part, obj in parts.items() for f in dataclasses.fields(obj) if f.init}
        unknown = sorted(set(changes) - set(owners))
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        for part in set(owners[k] for k in changes):
            mine = {k: v for k, v in changes.items() if owners[k] == part}
            parts[part] = dataclasses.replace(parts[part], **mine)
        return Recipe(**parts)


# Options whose relative paths may name a file shipped with the recipes (recipes/deepspeed/*.json).
PACKAGED_PATHS = ("deepspeed",)


def packaged_path(recipe: Path, value: str) -> str:
    """`value` as given if it exists relative to the working directory (or is absolute, or is not
    found); otherwise resolved against the nearest ancestor of the recipe file that holds it, so
    `deepspeed: recipes/deepspeed/zero3.json` works from any directory and from an installed package."""
    if Path(value).is_absolute() or Path(value).exists():
        return value
    for root in recipe.resolve().parents:
        if (root / value).is_file():
            return str(root / value)
    return value


def yaml_to_argv(path: str | Path) -> list[str]:
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option: value")
    argv = []
    for key, value in recipe.items():
        if key in PACKAGED_PATHS and isinstance(value, str) and value:
            value = packaged_path(Path(path), value)
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_recipe(recipe: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """A YAML recipe (optional) + command-line style overrides -> Recipe."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    argv = (yaml_to_argv(recipe) if recipe else []) + list(overrides or [])
    *args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise SystemExit(f"unknown options: {' '.join(unknown)} (from {recipe or 'the command line'})")
    return Recipe(*args)
