"""`victor estimate-memory RECIPE --gpus N --zero 2|3`: per-GPU memory a stage needs.

Parameter counts are exact: the stage's model is built on the `meta` device from the
backbones' configs (a local directory, a cached hub config, or the published backbones'
architecture fields in `recipes/published_models.json`, so it works offline), wrapped and
frozen exactly as `victor train` does. Memory then follows the usual mixed-precision
accounting (bf16 weights and gradients, fp32 Adam master + moments = 12 bytes per trainable
parameter) partitioned by ZeRO stage, plus activations of the LLM (and of the vision tower
when it trains) per layer and token, with and without gradient checkpointing, and the
logits. Not counted: the CUDA context, allocator fragmentation, communication buckets.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import yaml
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from victor.config import ConfigError, parse_recipe
from victor.model.comprehension import VisualComprehension
from victor.train.stages import MODULES, apply_freezing, modules_of, resolve_stage

GIB = 1024**3
CPU_PARSE = ["--use_cpu", "True", "--deepspeed", "", "--tf32", "False"]  # parse GPU recipes on any machine


def published_configs() -> dict:
    return json.loads((resources.files("victor") / "recipes" / "published_models.json").read_text())


def backbone_config(source: str):
    """A backbone's config: local directory / cached hub config first, then the published table."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        return getattr(config, "vision_config", config)
    except (OSError, ValueError):
        known = published_configs().get(source)
        if known is None:
            raise ConfigError(f"{source}: no local or cached config, and not one of the published backbones "
                              f"({', '.join(k for k in published_configs() if not k.startswith('_'))})") from None
        fields = dict(known)
        return CONFIG_MAPPING[fields.pop("model_type")](**fields)


def backbones_of(recipe_path: Path, seen: tuple = ()) -> tuple[str, str, object]:
    """(vision, llm, model arguments) of a recipe, following `init_from` to the sibling recipe
    whose `output_dir` it names when the previous stage's output does not exist yet."""
    recipe = parse_recipe(recipe_path, CPU_PARSE)
    model = recipe.model
    if model.vision and model.llm:
        return model.vision, model.llm, model
    if model.init_from and (Path(model.init_from) / "config.json").is_file():
        config = AutoConfig.from_pretrained(model.init_from, local_files_only=True)
        return config.vision_config, config.text_config, model
    for sibling in sorted(recipe_path.parent.glob("*.yaml")):
        spec = yaml.safe_load(sibling.read_text()) or {}
        if sibling != recipe_path and spec.get("output_dir") == model.init_from and sibling not in seen:
            vision, llm, first = backbones_of(sibling, seen + (recipe_path,))
            return vision, llm, first
    raise ConfigError(f"{recipe_path}: init_from={model.init_from} does not exist and no sibling recipe writes it")


@dataclass
class Counts:
    total: dict[str, int]
    trainable: dict[str, int]
    n_visual: int
    vision_config: object
    text_config: object


def count_parameters(recipe_path: Path) -> tuple[Counts, object]:
    recipe = parse_recipe(recipe_path, CPU_PARSE)
    vision, llm, first_model = backbones_of(recipe_path)
    vcfg = vision if not isinstance(vision, str) else backbone_config(vision)
    tcfg = llm if not isinstance(llm, str) else backbone_config(llm)
    side = vcfg.image_size // vcfg.patch_size
    has_cls = vcfg.model_type.startswith("clip")
    strategy = first_model.vision_feature_select_strategy
    n_visual = side * side + (1 if has_cls and strategy == "full" else 0)
    config = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_seq_length=n_visual,
                         vision_feature_layer=first_model.vision_feature_layer,
                         vision_feature_select_strategy=strategy)
    stage = resolve_stage(recipe.stage.stage, recipe.stage.train_vision, recipe.stage.comprehension,
                          recipe.data.template)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
        if stage.comprehension:
            model = VisualComprehension(model, recipe.comprehension)
    trainable = apply_freezing(model, stage)
    owner = modules_of(model)
    total = dict.fromkeys(MODULES, 0)
    for name, param in model.named_parameters():
        total[owner[name]] += param.numel()
    return Counts(total, trainable, n_visual, vcfg, config.text_config), recipe


def activation_bytes_per_token(hidden: int, kv: int, inter: int, gated: bool = True) -> int:
    """bf16 tensors one transformer layer keeps for backward, per token: norm inputs, q/k/v,
    attention output (fused attention keeps no score matrix), MLP input, the MLP's intermediates."""
    mlp = 4 * inter if gated else 2 * inter
    return 2 * (6 * hidden + 2 * kv + mlp)


def estimate(recipe_path: Path, gpus: int, zero: int, micro_batch: int | None = None, seq_len: int | None = None,
             offload: bool = False) -> dict:
    counts, recipe = count_parameters(recipe_path)
    t = counts.text_config
    b = micro_batch or recipe.training.per_device_train_batch_size
    s = seq_len or recipe.data.max_length
    params, train = sum(counts.total.values()), sum(counts.trainable.values())
    shard = lambda n, from_stage: n / gpus if zero >= from_stage else n  # noqa: E731
    if zero == 0:  # DDP: fp32 weights under autocast, fp32 grads, Adam moments
        weights, grads, optim = 4 * params, 4 * train, 8 * train
    else:
        weights, grads, optim = shard(2 * params, 3), shard(2 * train, 2), shard(12 * train, 1)
    if offload:
        weights, optim = (0.0 if zero == 3 else weights), 0.0
    head_dim = t.hidden_size // t.num_attention_heads
    kv = getattr(t, "num_key_value_heads", t.num_attention_heads) * head_dim
    per_token = activation_bytes_per_token(t.hidden_size, kv, t.intermediate_size)
    tokens = b * s
    layers = t.num_hidden_layers
    llm_off, llm_on = layers * tokens * per_token, layers * tokens * 2 * t.hidden_size + tokens * per_token
    vision_off = vision_on = 0
    if counts.trainable["vision"]:
        v = counts.vision_config
        v_tokens = b * counts.n_visual
        v_per = activation_bytes_per_token(v.hidden_size, v.hidden_size, v.intermediate_size, gated=False)
        vision_off = v.num_hidden_layers * v_tokens * v_per
        vision_on = v.num_hidden_layers * v_tokens * 2 * v.hidden_size + v_tokens * v_per
    logits = tokens * t.vocab_size * 10  # bf16 logits, their fp32 copy for the loss, its fp32 gradient
    fixed = weights + grads + optim + logits
    return {
        "recipe": str(recipe_path), "stage": recipe.stage.stage, "gpus": gpus, "zero": zero, "offload": offload,
        "micro_batch": b, "seq_len": s, "n_visual": counts.n_visual,
        "parameters": counts.total, "trainable": counts.trainable,
        "bytes": {"weights": weights, "gradients": grads, "optimizer": optim, "logits": logits,
                  "activations_checkpointing": llm_on + vision_on, "activations_no_checkpointing": llm_off + vision_off,
                  "total_checkpointing": fixed + llm_on + vision_on,
                  "total_no_checkpointing": fixed + llm_off + vision_off},
    }


def format_estimate(e: dict) -> str:
    def fmt(n):
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"

    lines = [f"{e['recipe']}: stage {e['stage']}, {e['gpus']} GPU(s), ZeRO-{e['zero']}"
             f"{' + offload' if e['offload'] else ''}, micro-batch {e['micro_batch']} x {e['seq_len']} tokens "
             f"({e['n_visual']} visual), bf16",
             "parameters: " + ", ".join(f"{m} {fmt(n)}" + ("" if e["trainable"][m] else " (frozen)")
                                       for m, n in e["parameters"].items() if n),
             f"{'per GPU':34s} {'GiB':>8s}"]
    for key, label in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "optimizer state (Adam)"),
                       ("logits", "logits + loss"), ("activations_checkpointing", "activations, checkpointing on"),
                       ("activations_no_checkpointing", "activations, checkpointing off"),
                       ("total_checkpointing", "total, checkpointing on"),
                       ("total_no_checkpointing", "total, checkpointing off")):
        lines.append(f"{label:34s} {e['bytes'][key] / GIB:8.1f}")
    lines.append("not counted: CUDA context (~0.5-1 GiB), allocator fragmentation, ZeRO communication buckets")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="victor estimate-memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=3, help="0 = plain DDP")
    p.add_argument("--offload", action="store_true", help="ZeRO offload of optimizer (and, at ZeRO-3, parameters)")
    p.add_argument("--micro-batch", type=int, help="default: the recipe's per_device_train_batch_size")
    p.add_argument("--seq-len", type=int, help="tokens per sample (default: the recipe's max_length, the worst case)")
    args = p.parse_args(argv)
    result = estimate(args.recipe, args.gpus, args.zero, args.micro_batch, args.seq_len, args.offload)
    print(format_estimate(result))
    return result
