"""Typed configuration: dataclasses parsed by HfArgumentParser from a YAML recipe + CLI overrides.

A recipe is a flat YAML mapping whose keys are fields of the dataclasses below or of
`transformers.TrainingArguments`. `victor train recipe.yaml --max_steps 50` parses the recipe
first and the command line after it, so the command line wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from victor.model.comprehension import ComprehensionConfig


@dataclass
class ModelArguments:
    vision: str | None = field(default=None, metadata={"help": "vision encoder: hub id or directory"})
    llm: str | None = field(default=None, metadata={"help": "causal LM: hub id or directory"})
    tokenizer: str | None = field(default=None, metadata={"help": "defaults to the LLM's tokenizer"})
    init_from: str | None = field(default=None, metadata={"help": "a previous stage's output directory"})
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = field(default="default", metadata={"help": "default (drop CLS) | full"})
    normalize_projector: bool = field(default=False, metadata={"help": "L2-normalise projector outputs (authors' option)"})
    chat_template: str | None = field(default=None, metadata={"help": "'vicuna', a Jinja string, or the tokenizer's own"})
    attn_implementation: str = "sdpa"


@dataclass
class DataArguments:
    data_path: str = field(default="", metadata={"help": "LLaVA JSON/JSONL file(s), comma-separated"})
    image_root: str | None = None
    max_length: int = 2048
    template: str | None = field(default=None, metadata={"help": "plain | chat; defaults to the stage's"})


@dataclass
class StageArguments:
    stage: str = field(default="1", metadata={"help": "1 | 1.5 | 2"})
    train_vision: bool = False
    comprehension: bool = field(default=True, metadata={"help": "stage 1.5 only: False = plain caption baseline"})
    projector_lr: float | None = None
    llm_lr: float | None = None
    vision_lr: float | None = None
    pool_lr: float | None = 1.5e-4
    head_lr: float | None = None


@dataclass
class ComprehensionArguments(ComprehensionConfig):
    def to_config(self) -> ComprehensionConfig:
        return ComprehensionConfig(**{f.name: getattr(self, f.name) for f in fields(ComprehensionConfig)})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, StageArguments, ComprehensionArguments, TrainingArguments)


def yaml_to_argv(path: str | Path) -> list[str]:
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option: value")
    argv = []
    for key, value in recipe.items():
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_recipe(recipe: str | Path | None, overrides: list[str] | None = None):
    """-> (ModelArguments, DataArguments, StageArguments, ComprehensionArguments, TrainingArguments)."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    argv = (yaml_to_argv(recipe) if recipe else []) + list(overrides or [])
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    *args, unknown = parsed
    if unknown:
        raise SystemExit(f"unknown options: {' '.join(unknown)} (from {recipe or 'the command line'})")
    return tuple(args)
