"""LoRA for stages 1.5 and 2, through peft, and `victor merge`.

With `lora_r > 0` the LLM's linear layers (all of them but the output head, or the
`lora_target_modules` named) get LoRA adapters and their base weights are frozen; the
projector, and in stage 1.5 the pool and head, train in full; the vision tower trains in full
when `train_vision` asks and gets adapters only with `lora_vision`. Adapters are injected into
the LLaVA model in place (`peft.inject_adapter_in_model`): the model keeps its class, so the
stage-1.5 module, the Trainer and every engine see an ordinary module.

A stage (or `checkpoint-N`) trained with LoRA holds:

* the stock LLaVA checkpoint of the *base* weights (the LLM as loaded, the projector and vision
  as trained), loadable by stock transformers as it always is;
* `adapter/`: a peft adapter (`adapter_config.json`, `adapter_model.safetensors`) for that
  checkpoint (`PeftModel.from_pretrained(model, "<stage>/adapter")`).

`victor merge STAGE --output DIR` folds the adapter into the weights: DIR is a stock checkpoint,
like a stage trained without LoRA. victor's own loaders (`init_from`, eval, chat) merge an
unmerged stage's adapter in memory when they load it (`victor merge`: `victor.model.merge`; on
load: `victor.model.adapter`).

QLoRA (a 4-bit base) is not implemented: it needs bitsandbytes and a GPU, neither of which
this project's machines have, so it could not be tested.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from victor.config import ConfigError
from victor.model.adapter import ADAPTER_DIR

log = logging.getLogger(__name__)
LORA_MARK = ".lora_"
BASE_LAYER = ".base_layer"


def llava_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "llava", model)


def has_lora(model: torch.nn.Module) -> bool:
    return getattr(llava_of(model), "_victor_lora", None) is not None


def target_regex(llava, targets: str, vision: bool) -> str:
    """A full-name regex of the linear layers to adapt: inside the LLM (never its output head) and,
    with `vision`, inside the vision tower; `targets` `all-linear` or comma-separated layer names."""
    roots = {"llm": llava.model.language_model, "vision": llava.model.vision_tower}
    prefixes = {k: next(n for n, m in llava.named_modules() if m is root) for k, root in roots.items()}
    chosen = ["llm"] + (["vision"] if vision else [])
    names = []
    for key in chosen:
        for name, module in roots[key].named_modules():
            if isinstance(module, torch.nn.Linear):
                names.append(f"{prefixes[key]}.{name}")
    if targets != "all-linear":
        wanted = {t.strip() for t in targets.split(",") if t.strip()}
        unknown = wanted - {n.rsplit(".", 1)[-1] for n in names}
        if unknown:
            known = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ConfigError(f"lora_target_modules: no linear layer named {', '.join(sorted(unknown))} in the "
                              f"{' or '.join(chosen)}; its linear layers are {', '.join(known)}")
        names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
    if not names:
        raise ConfigError("lora_r > 0 but there is no linear layer to adapt")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def apply_lora(model: torch.nn.Module, stage, stage_args, counts: dict[str, int]) -> dict[str, int]:
    """Inject adapters when `stage_args.lora_r > 0` and set what trains; -> trainable counts per module
    (the `counts` given, unchanged, without LoRA). `stage_args` passed `StageArguments.validate`
    (preflight): no LoRA on stage 1, which does not train the LLM."""
    if not getattr(stage_args, "lora_r", 0):
        return counts
    from peft import LoraConfig, inject_adapter_in_model

    from victor.train.stages import MODULES, modules_of

    llava = llava_of(model)
    config = LoraConfig(r=stage_args.lora_r, lora_alpha=stage_args.lora_alpha, lora_dropout=stage_args.lora_dropout,
                        target_modules=target_regex(llava, stage_args.lora_target_modules, stage_args.lora_vision),
                        bias="none")
    inject_adapter_in_model(config, llava)
    llava._victor_lora = config
    # with the embeddings frozen, a text-only batch would reach checkpointed layers without a
    # tensor that needs grad (no gradient for their adapters under reentrant checkpointing)
    llava.enable_input_require_grads()
    owner = modules_of(model)
    counts = dict.fromkeys(MODULES, 0)
    for name, param in model.named_parameters():
        module = owner[name]
        lora = LORA_MARK in name
        adapted = module == "llm" or (module == "vision" and stage_args.lora_vision)
        param.requires_grad_(lora or (module in stage.trains and not adapted))
        if param.requires_grad:
            counts[module] += param.numel()
    log.info("LoRA r=%d alpha=%g on %d layers", config.r, config.lora_alpha,
             sum(1 for n, _ in llava.named_modules() if n.endswith(".lora_A")))
    return counts


# -- saving and loading -------------------------------------------------------------------------
def split_lora_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A LoRA-injected LLaVA state dict -> (base keys as a plain LLaVA names them, adapter keys
    as peft saves them: `base_model.model.<layer>.lora_A.weight`)."""
    base, adapter = {}, {}
    for key, value in state.items():
        if LORA_MARK in key:
            adapter["base_model.model." + key.replace(".default.", ".")] = value
        else:
            base[key.replace(BASE_LAYER, "")] = value
    return base, adapter


def save_adapter(llava, adapter: dict[str, torch.Tensor], output_dir: str, base_path: str | None = None) -> None:
    from safetensors.torch import save_file

    directory = Path(output_dir, ADAPTER_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    config = llava._victor_lora
    config.base_model_name_or_path = base_path or str(Path(output_dir).resolve())
    config.save_pretrained(str(directory))
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(directory / "adapter_model.safetensors"))


def save_lora_llava(llava, state: dict[str, torch.Tensor], output_dir: str, **kwargs) -> None:
    """`llava.save_pretrained` for a LoRA-injected model: the base checkpoint and `adapter/`."""
    base, adapter = split_lora_state(state)
    llava.save_pretrained(output_dir, state_dict=base, **kwargs)
    save_adapter(llava, adapter, output_dir)


@torch.no_grad()
def load_lora_llava(llava, directory: str) -> None:
    """Resume: a LoRA stage's base checkpoint and adapter into the live (injected) model."""
    from safetensors import safe_open

    from victor.train.checkpoint import (
        CheckpointError,
        _weight_files,
        copy_into,
        saved_names,
    )

    live = llava.state_dict(keep_vars=True)
    names = saved_names(llava)
    wanted = {names[k].replace(BASE_LAYER, ""): k for k in live if LORA_MARK not in k}
    wanted.update({"base_model.model." + k.replace(".default.", "."): k for k in live if LORA_MARK in k})
    files = _weight_files(directory) + [os.path.join(directory, ADAPTER_DIR, "adapter_model.safetensors")]
    loaded = set()
    for path in files:
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing; not a LoRA checkpoint")
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                key = wanted.get(name)
                if key is None:
                    raise CheckpointError(f"{path}: tensor {name!r} has no place in the LoRA model")
                copy_into(live[key], f.get_tensor(name))
                loaded.add(key)
    tied = {id(p) for k, p in live.items() if k in loaded}
    missing = [k for k, p in live.items() if k not in loaded and id(p) not in tied]
    if missing:
        raise CheckpointError(f"{directory}: no weights for {missing[:5]}")
