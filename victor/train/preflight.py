"""Checks a stage's recipe before any weight is loaded: every message names the option.

The options' own values (choices, ranges, combinations) are `Recipe.validate`'s, in
`victor.config`, run first; what is checked here is the environment the options point at:
model directories and hub ids, data files, the image folder, the checkpoint's visual token
count, the attention kernel, a saved pool, the DeepSpeed config, and (once the data and the
collator exist) whether any probed sample fits `max_length`.

What can only be known after loading (the model's own visual token count when assembling
from two backbones) is checked right after loading, still before training.
"""
from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

from victor.config import ConfigError, Recipe
from victor.model.comprehension import check_attention_kernel

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
    """init_from holds stage-1.5 state whose pool has `pool_size` rows."""
    from victor.model.comprehension_state import STATE_FILE, pool_rows

    if not init_from or not (Path(init_from) / STATE_FILE).is_file():
        raise ConfigError(f"{option}: init_from={init_from} has no {STATE_FILE} (a stage-1.5 output or a "
                          "checkpoint converted from a Croc/ViCToR release has one)")
    rows = pool_rows(init_from)
    if rows != pool_size:
        raise ConfigError(f"{option}: the pool in {Path(init_from) / STATE_FILE} has {rows} rows; set pool_size={rows}")


def preflight(recipe: Recipe, comprehension: bool) -> None:
    """The recipe's option values (`Recipe.validate`), then everything they point at."""
    recipe.validate(comprehension)
    model, data, training = recipe.model, recipe.data, recipe.training
    if model.init_from:
        model_source("init_from", model.init_from, must_be_checkpoint=True)
    for option in ("vision", "llm", "tokenizer"):
        if getattr(model, option) and not model.init_from:
            model_source(option, getattr(model, option))
    for f in filter(None, data.data_path.split(",")):
        if not (os.path.isfile(f) or os.path.isdir(f) or (any(c in f for c in "*?[") and glob.glob(f))):
            raise ConfigError(f"data_path: no such file {f} (nor a folder, nor files matching it)")
    if data.image_root and not os.path.isdir(data.image_root):
        raise ConfigError(f"image_root={data.image_root}: no such directory")
    n_visual = visual_tokens_of(model.init_from) if model.init_from else None
    check_max_length(data.max_length, n_visual)
    if comprehension:
        if n_visual is not None:
            recipe.comprehension.check_visual_tokens(n_visual)
        try:
            check_attention_kernel(recipe.comprehension.attention, model.attn_implementation)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if recipe.comprehension.pool_init == "checkpoint":
            saved_pool("pool_init=checkpoint", model.init_from, recipe.comprehension.pool_size)
    if isinstance(training.deepspeed, str) and training.deepspeed and not os.path.isfile(training.deepspeed):
        raise ConfigError(f"deepspeed={training.deepspeed}: no such DeepSpeed config file")


# Which setting to change for the skip reasons a run can end on.
FIX_FOR = {
    "image_beyond_max_length": "raise max_length",
    "answer_beyond_max_length": "raise max_length",
    "missing_image": "check image_root (image paths are relative to it)",
    "truncated_image": "re-download or remove the broken images (`victor data check` lists them)",
    "corrupt_image": "re-download or remove the broken images (`victor data check` lists them)",
    "image_too_large": "raise max_image_pixels, or resize the images",
    "template_error": "choose a chat_template that accepts the data's turns",
}
LENGTH_REASONS = ("image_beyond_max_length", "answer_beyond_max_length")
PROBE = 256  # records tokenised before training: a bounded probe, never a pass over the data


def check_lengths_fit(dataset, collator, max_length: int, seed: int, probe: int = PROBE) -> None:
    """Fail before the first step when `max_length` cuts every probed sample: up to `probe` records
    (`victor.data.sources.probe_texts`: seeded random ones and, where the data stores token-free
    lengths, the shortest) are tokenised (images are not decoded), and if none fits, the error
    names the shortest length that would. The end-of-run check (`check_trained`) covers the rest."""
    from victor.data.sources import probe_texts

    needed = [collator.required_length(s) for s in probe_texts(dataset, seed, probe, collator.n_visual)]
    needed = [n for n in needed if n is not None]
    if needed and min(needed) > max_length:
        raise ConfigError(f"max_length={max_length} leaves nothing to train on: none of the {len(needed)} samples "
                          f"probed fits; the shortest needs {min(needed)} tokens to keep its images whole and one "
                          f"answer token. Raise max_length to at least {min(needed)}")


def check_trained(samples: int, skipped: dict[str, int], max_skip_fraction: float, kept_reasons) -> None:
    """At the end of a run: it trained on something, and skipped no more than max_skip_fraction."""
    skips = {r: n for r, n in skipped.items() if r not in kept_reasons and n}
    total = sum(skips.values())
    if samples and samples > total and total / samples <= max_skip_fraction:
        return
    reason, count = max(skips.items(), key=lambda kv: kv[1]) if skips else ("none", 0)
    what = "every sample was skipped" if samples <= total else \
        f"{total} of {samples} samples ({total / samples:.1%}) were skipped, above max_skip_fraction={max_skip_fraction}"
    raise ConfigError(f"the run trained on too little: {what}; the main reason is '{reason}' ({count} samples): "
                      f"{FIX_FOR.get(reason, 'see the warnings above and run `victor data check`')}. "
                      f"All reasons: {dict(sorted(skips.items()))}")
