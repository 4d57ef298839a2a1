"""Checks a stage's recipe before any weight is loaded: every message names the option.

What can only be known after loading (the model's own visual token count when assembling
from two backbones) is checked right after loading, still before training.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from victor.config import ConfigError, Recipe, check_choices

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def model_source(option: str, value: str, must_be_checkpoint: bool = False) -> None:
    """A local directory (that exists) or a well-formed hub id (`org/name`)."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option}={value}: a file, not a model directory")
        if must_be_checkpoint and not (path / "config.json").is_file():
            raise ConfigError(f"{option}={value}: no config.json there; not a previous stage's output")
        return
    if value.startswith((".", "/", "~")) or not HUB_ID.match(value) or ".." in value:
        raise ConfigError(f"{option}={value}: no such directory, and not a hub id (org/name)")


def visual_tokens_of(checkpoint: str) -> int | None:
    """`image_seq_length` from a local checkpoint's config.json, without loading weights."""
    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("image_seq_length")


def check_max_length(max_length: int, n_visual: int | None) -> None:
    if n_visual is not None and max_length <= n_visual:
        raise ConfigError(f"max_length={max_length} cannot hold one image ({n_visual} visual tokens) and its text; "
                          f"raise it above {n_visual}")


def saved_pool(option: str, init_from: str | None, pool_size: int) -> None:
    """init_from holds a comprehension.safetensors whose pool has `pool_size` rows."""
    from safetensors import safe_open

    from victor.train.checkpoint import EXTRA_STATE

    path = Path(init_from or "", EXTRA_STATE)
    if not init_from or not path.is_file():
        raise ConfigError(f"{option}: init_from={init_from} has no {EXTRA_STATE} (a stage-1.5 output or a "
                          "checkpoint converted from a Croc/ViCToR release has one)")
    with safe_open(str(path), framework="pt") as f:
        rows = f.get_slice("pool").get_shape()[0] if "pool" in f.keys() else None
    if rows != pool_size:
        raise ConfigError(f"{option}: the pool in {path} has {rows} rows; set pool_size={rows}")


def preflight(recipe: Recipe, comprehension: bool) -> None:
    model, data, training = recipe.model, recipe.data, recipe.training
    for options in (model, data, recipe.stage, recipe.comprehension):
        check_choices(options)
    if model.init_from:
        model_source("init_from", model.init_from, must_be_checkpoint=True)
    elif not (model.vision and model.llm):
        raise ConfigError("set init_from (a previous stage's output) or both vision and llm (hub ids or directories)")
    for option in ("vision", "llm", "tokenizer"):
        if getattr(model, option) and not model.init_from:
            model_source(option, getattr(model, option))
    files = [f for f in data.data_path.split(",") if f]
    if not files:
        raise ConfigError("data_path is empty: give one or more LLaVA JSON/JSONL files, comma-separated")
    for f in files:
        if not os.path.isfile(f):
            raise ConfigError(f"data_path: no such file {f}")
    if data.image_root and not os.path.isdir(data.image_root):
        raise ConfigError(f"image_root={data.image_root}: no such directory")
    if not 0.0 <= data.max_skip_fraction <= 1.0:
        raise ConfigError(f"max_skip_fraction={data.max_skip_fraction} must be in [0, 1]")
    if data.skip_window < 1 or data.max_image_pixels < 1:
        raise ConfigError("skip_window and max_image_pixels must be >= 1")
    if data.max_length < 8:
        raise ConfigError(f"max_length={data.max_length} must be >= 8")
    n_visual = visual_tokens_of(model.init_from) if model.init_from else None
    check_max_length(data.max_length, n_visual)
    if comprehension:
        recipe.comprehension.validate(n_visual)
        if recipe.comprehension.pool_init == "checkpoint":
            saved_pool("pool_init=checkpoint", model.init_from, recipe.comprehension.pool_size)
    for option in ("projector_lr", "llm_lr", "vision_lr"):
        value = getattr(recipe.stage, option)
        if value is not None and not value > 0:
            raise ConfigError(f"{option}={value} must be > 0")
    if isinstance(training.deepspeed, str) and training.deepspeed and not os.path.isfile(training.deepspeed):
        raise ConfigError(f"deepspeed={training.deepspeed}: no such DeepSpeed config file")
