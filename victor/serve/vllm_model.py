"""vLLM model for `victor_llava`: vLLM's LLaVA whose projector output is L2-normalised per token.

Imported by vLLM only (registered by `vllm_plugin.register`), so it imports vllm at the top.
Vision tower, language model, multimodal processor and weight names are vLLM's LLaVA ones;
the only difference is the projector's forward.
"""
from __future__ import annotations

import torch
from vllm.model_executor.models.llava import (
    LlavaForConditionalGeneration,
    LlavaMultiModalProjector,
)

from victor.model.normalized import SUFFIX


class NormalizedLlavaMultiModalProjector(LlavaMultiModalProjector):
    """vLLM's LLaVA projector (same parameters), then per-token L2 normalisation."""

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(super().forward(image_features), dim=-1)


class VictorLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """vLLM's LlavaForConditionalGeneration with a normalising projector."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        act = config.projector_hidden_act
        config.projector_hidden_act = act.removesuffix(SUFFIX)  # vLLM's activations know "gelu", not "gelu+l2norm"
        try:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        finally:
            config.projector_hidden_act = act
        if self.multi_modal_projector is not None:  # None when images are disabled
            self.multi_modal_projector.__class__ = NormalizedLlavaMultiModalProjector
