"""`victor merge STAGE --output DIR`: a stage trained with LoRA -> a stock checkpoint on disk, its
adapter folded into the weights (`victor.model.adapter.merge_adapter`, as `load_model` does in
memory) and the stage's other files copied beside it."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from victor.config import ConfigError
from victor.model.adapter import ADAPTER_DIR, adapter_of, merge_adapter
from victor.model.assemble import load_model


def merge(source: str, output: str, dtype: torch.dtype | None = None) -> dict:
    """`victor merge`: a LoRA stage -> a stock checkpoint with the adapter folded in."""
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
