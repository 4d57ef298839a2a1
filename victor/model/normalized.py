"""The authors' projector option: L2-normalise every projected visual token.

Stock LLaVA cannot express this, so such a checkpoint gets its own model type,
`victor_llava`, whose configuration and model classes live in `victor/model/remote/`: they
import only torch and transformers, and `save_pretrained` copies them into every checkpoint
with an `auto_map`. Other tools therefore load it with `trust_remote_code=True`, and without
that flag fail loudly instead of loading it silently wrong (see the guards described in
`remote/configuration_victor_llava.py`). `register` makes the type loadable without the flag
once victor is imported.
"""
from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from victor.model.remote.configuration_victor_llava import (
    MODEL_TYPE,
    SUFFIX,
    VictorLlavaConfig,
)
from victor.model.remote.modeling_victor_llava import (
    NormalizedProjector,
    VictorLlavaForConditionalGeneration,
)

__all__ = ["MODEL_TYPE", "SUFFIX", "NormalizedProjector", "VictorLlavaConfig",
           "VictorLlavaForConditionalGeneration", "register"]


def register() -> None:
    """Make `victor_llava` loadable through the Auto classes, as its `auto_map` does (idempotent)."""
    AutoConfig.register(MODEL_TYPE, VictorLlavaConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForImageTextToText):
        auto.register(VictorLlavaConfig, VictorLlavaForConditionalGeneration, exist_ok=True)
