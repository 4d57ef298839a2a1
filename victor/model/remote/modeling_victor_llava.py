"""Model of `victor_llava`: stock LLaVA whose projector output is L2-normalised per token.

Copied into every victor_llava checkpoint with `configuration_victor_llava.py`; depends only
on torch and transformers. Parameter names are those of stock LLaVA.
"""
import torch
from transformers import LlavaForConditionalGeneration
from transformers.activations import ACT2FN

from .configuration_victor_llava import SUFFIX, VictorLlavaConfig


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
    """LlavaForConditionalGeneration with `NormalizedProjector` as its projector."""

    config_class = VictorLlavaConfig

    def __init__(self, config: VictorLlavaConfig):
        act = config.projector_hidden_act
        config.projector_hidden_act = act.removesuffix(SUFFIX)  # let the stock init build its parts
        try:
            super().__init__(config)
        finally:
            config.projector_hidden_act = act
        self.model.multi_modal_projector = NormalizedProjector(config)
        self.post_init()


VictorLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
