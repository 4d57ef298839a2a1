"""The authors' projector option: L2-normalise every projected visual token.

Stock LLaVA cannot express this, so a checkpoint trained with it must never load silently
wrong in stock tools. Two guards, both in the saved `config.json`:

* `model_type: victor_llava`: `AutoConfig`, `AutoModel*`, `pipeline` and vLLM reject the
  unknown type unless `victor` has been imported (which registers it);
* `projector_hidden_act: "gelu+l2norm"`: the stock `LlavaForConditionalGeneration` class, which
  only warns about a foreign model type, fails while building its projector because no such
  activation exists, instead of silently dropping the normalisation.
"""
from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.activations import ACT2FN

MODEL_TYPE = "victor_llava"
SUFFIX = "+l2norm"


class VictorLlavaConfig(LlavaConfig):
    """LlavaConfig whose projector output is L2-normalised per token."""

    model_type = MODEL_TYPE

    def __post_init__(self, **kwargs):
        if not self.projector_hidden_act.endswith(SUFFIX):
            self.projector_hidden_act = self.projector_hidden_act + SUFFIX
        super().__post_init__(**kwargs)


class NormalizedProjector(torch.nn.Module):
    """Two-layer MLP, then per-token L2 normalisation (same parameter names as stock LLaVA)."""

    def __init__(self, config: VictorLlavaConfig):
        super().__init__()
        n_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        width, bias = config.text_config.hidden_size, config.multimodal_projector_bias
        self.linear_1 = torch.nn.Linear(config.vision_config.hidden_size * n_layers, width, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act.removesuffix(SUFFIX)]
        self.linear_2 = torch.nn.Linear(width, width, bias=bias)

    def forward(self, image_features):
        hidden = self.linear_2(self.act(self.linear_1(image_features)))
        return torch.nn.functional.normalize(hidden, dim=-1)


class VictorLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = VictorLlavaConfig

    def __init__(self, config: VictorLlavaConfig):
        stock_act = config.projector_hidden_act
        config.projector_hidden_act = stock_act.removesuffix(SUFFIX)  # let the stock init build its parts
        try:
            super().__init__(config)
        finally:
            config.projector_hidden_act = stock_act
        self.model.multi_modal_projector = NormalizedProjector(config)
        self.post_init()


def register() -> None:
    """Make `victor_llava` loadable through the Auto classes (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, VictorLlavaConfig)
        AutoModelForImageTextToText.register(VictorLlavaConfig, VictorLlavaForConditionalGeneration)
    except ValueError:
        pass  # already registered
