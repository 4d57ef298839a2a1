"""A stage trained with LoRA on load: its `adapter/` folded into the weights in memory
(`merge_adapter`, used by `load_model`); on disk that is `victor.model.merge` (`victor merge
STAGE --output DIR`). The training side (injection, saving, resume) is `victor.train.lora`."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from victor.config import ConfigError

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"


def adapter_of(directory: str | os.PathLike) -> Path | None:
    path = Path(directory, ADAPTER_DIR)
    return path if (path / "adapter_config.json").is_file() else None


def merge_adapter(model, directory: str | os.PathLike):
    """A loaded base checkpoint with `directory`'s adapter folded into its weights (a plain model).
    Without an adapter the model comes back as it is: peft is needed only for LoRA stages."""
    adapter = adapter_of(directory)
    if adapter is None:
        return model
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ConfigError(f"{directory} is a LoRA stage (it has {ADAPTER_DIR}/): loading it needs peft "
                          "(pip install 'victor[lora]'), or merge it where peft is installed "
                          f"(`victor merge {directory} --output DIR`) and use DIR") from e
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ConfigError(f"{directory} is a LoRA stage (it has {ADAPTER_DIR}/); under ZeRO-3 its weights load "
                          f"partitioned and cannot be merged on load: run `victor merge {directory} --output DIR` "
                          "and use DIR")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    log.info("merged the LoRA adapter of %s", directory)
    return merged
