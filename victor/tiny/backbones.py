"""Tiny backbones saved as ordinary Hugging Face directories (the `tiny` recipe, and tests).

`save_backbones` writes a vision encoder (+ image processor) and a causal LM (+ tokenizer)
the way hub repos look, so that the real loading path (`build_model(vision=dir, llm=dir)`)
is what runs on a laptop and in CI.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
)


def vision_config(family: str = "clip", image_size: int = 64, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    if family == "clip":
        return CLIPVisionConfig(**common, projection_dim=hidden)
    if family == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"vision family {family!r}: choose clip or siglip")


def text_config(family: str = "llama", vocab_size: int = 512, hidden: int = 128, layers: int = 2):
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"llm family {family!r}: choose llama or qwen2")


def image_processor(family: str, image_size: int):
    size = {"height": image_size, "width": image_size}
    if family == "clip":
        return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size)
    return SiglipImageProcessor(size=size)


def save_backbones(out_dir: str | Path, tokenizer, *, vision: str = "clip", llm: str = "llama", image_size: int = 64,
                   patch_size: int = 8, vision_hidden: int = 64, vision_layers: int = 2, llm_hidden: int = 128,
                   llm_layers: int = 2, seed: int = 0) -> tuple[str, str]:
    """Random-init tiny backbones saved to `out_dir/vision` and `out_dir/llm`; returns both paths."""
    torch.manual_seed(seed)
    out = Path(out_dir)
    vcfg = vision_config(vision, image_size, patch_size, vision_hidden, vision_layers)
    AutoModel.from_config(vcfg).save_pretrained(out / "vision")
    image_processor(vision, image_size).save_pretrained(out / "vision")
    tcfg = text_config(llm, len(tokenizer), llm_hidden, llm_layers)
    tcfg.bos_token_id, tcfg.eos_token_id, tcfg.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(tcfg).save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    return str(out / "vision"), str(out / "llm")

