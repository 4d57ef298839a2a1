"""Configuration of `victor_llava`: a LLaVA whose projector output is L2-normalised per token.

Copied into every victor_llava checkpoint; depends only on transformers. Two guards keep
stock loaders from loading such a checkpoint silently wrong:

* `model_type: victor_llava`: the Auto classes reject it unless victor is imported or the
  caller passes `trust_remote_code=True` (which runs this file and its modeling file);
* `projector_hidden_act: "gelu+l2norm"`: the stock `LlavaForConditionalGeneration` class, which
  only warns about a foreign model type, fails while building its projector because no such
  activation exists, instead of silently dropping the normalisation.
"""
from transformers import LlavaConfig

MODEL_TYPE = "victor_llava"
SUFFIX = "+l2norm"
MODEL_CLASS = "modeling_victor_llava.VictorLlavaForConditionalGeneration"
# AutoModel gives the generating class, as in most remote-code VLMs: generic harnesses
# (lmms-eval's `huggingface` model) load remote code through AutoModel and call generate.
AUTO_MAP = {
    "AutoConfig": "configuration_victor_llava.VictorLlavaConfig",
    "AutoModel": MODEL_CLASS,
    "AutoModelForImageTextToText": MODEL_CLASS,
}


class VictorLlavaConfig(LlavaConfig):
    """LlavaConfig whose projector output is L2-normalised per token; carries its `auto_map`."""

    model_type = MODEL_TYPE

    def __post_init__(self, **kwargs):
        if not self.projector_hidden_act.endswith(SUFFIX):
            self.projector_hidden_act = self.projector_hidden_act + SUFFIX
        super().__post_init__(**kwargs)
        # entries already present (e.g. hub-prefixed ones written by transformers) win
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}


VictorLlavaConfig.register_for_auto_class("AutoConfig")
