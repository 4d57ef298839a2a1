"""A stage trained with LoRA on load: its `adapter/` folded into the weights, in memory
(`merge_adapter`, used by `load_model`) or on disk (`merge`, `victor merge STAGE --output DIR`).
The training side (injection, saving, resume) is `victor.train.lora`."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from victor.config import ConfigError

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"


def adapter_of(directory: str | os.PathLike) -> Path | None:
    path = Path(directory, ADAPTER_DIR)
    return path if (path / "adapter_config.json").is_file() else None


def merge_adapter(model, directory: str | os.PathLike):
    """A loaded base checkpoint with `directory`'s adapter folded into its weights (a plain model)."""
    from peft import PeftModel

    adapter = adapter_of(directory)
    if adapter is None:
        return model
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ConfigError(f"{directory} is a LoRA stage (it has {ADAPTER_DIR}/); under ZeRO-3 its weights load "
                          f"partitioned and cannot be merged on load: run `victor merge {directory} --output DIR` "
                          "and use DIR")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    log.info("merged the LoRA adapter of %s", directory)
    return merged


def merge(source: str, output: str, dtype: torch.dtype | None = None) -> dict:
    """`victor merge`: a LoRA stage -> a stock checkpoint with the adapter folded in."""
    from victor.model.assemble import load_model

    if adapter_of(source) is None:
        raise ConfigError(f"{source}: no {ADAPTER_DIR}/adapter_config.json; not a stage trained with LoRA")
    if Path(output).resolve() == Path(source).resolve():
        raise ConfigError("--output must differ from the stage directory")
    model, processor = load_model(source, dtype=dtype, merge_lora=False)
    config = json.loads((adapter_of(source) / "adapter_config.json").read_text())
    merged = merge_adapter(model, source)
    merged.save_pretrained(output)
    processor.save_pretrained(output)
    copied = []
    for name in os.listdir(source):  # stage-1.5 pool and head, the stage record, remote code
        wanted = (name.endswith((".py", ".safetensors")) and not name.startswith("model")) or name == "victor_stage.json"
        if wanted and not Path(output, name).exists():
            shutil.copy2(os.path.join(source, name), os.path.join(output, name))
            copied.append(name)
    return {"source": source, "output": output, "r": config.get("r"), "alpha": config.get("lora_alpha"),
            "layers": len(re.findall(r"\|", config.get("target_modules") or "")) + 1
            if isinstance(config.get("target_modules"), str) else len(config.get("target_modules") or []),
            "copied": copied}
