"""Tiny fakes of the authors' released checkpoints, in their key layout and config fields.

`write_released` turns a tiny Llama directory (the conftest backbones) into what Croc's and
LLaVA-1.5's `save_pretrained` write: `croc_llama` / `llava_llama` config with the `mm_*`
fields, the LLM's own keys (`model.layers.*`, `model.embed_tokens`, `lm_head`), a random
`model.mm_projector.{0,2}`, and for Croc the pool `model.mask_token`, the unused
`model.cross_attention.*` and the head `transform_block.*`. The vision tower is only named
(`mm_vision_tower`), never stored, and the tokenizer has no `<image>` token, as Vicuna's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import make_tokenizer
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

IMAGE_ROW = 4  # the conftest tokenizer's <image> id: the fake LLM and tokenizer lack that row
POOL_ROWS = 2048


def fake_tokenizer() -> PreTrainedTokenizerFast:
    """The conftest word-level tokenizer without `<image>` (ids above it shift down by one)."""
    vocab = [t for t, _ in sorted(make_tokenizer().get_vocab().items(), key=lambda kv: kv[1]) if t != "<image>"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def released_config(kind: str, llm_dir: str, vision_dir: str, vision_hidden: int) -> dict:
    llm = json.loads(Path(llm_dir, "config.json").read_text())
    config = {  # the LLaMA fields as LLaVA-1.5-era configs write them (rope_theta at top level)
        "_name_or_path": "./checkpoints/croc-finetune", "architectures": [
            "CrocLlamaForCausalLM" if kind == "croc_llama" else "LlavaLlamaForCausalLM"],
        "model_type": kind, "attention_bias": False, "bos_token_id": llm["bos_token_id"],
        "eos_token_id": llm["eos_token_id"], "pad_token_id": llm["pad_token_id"],
        "hidden_act": "silu", "hidden_size": llm["hidden_size"], "intermediate_size": llm["intermediate_size"],
        "initializer_range": 0.02, "max_position_embeddings": llm["max_position_embeddings"],
        "num_attention_heads": llm["num_attention_heads"], "num_hidden_layers": llm["num_hidden_layers"],
        "num_key_value_heads": llm["num_key_value_heads"], "pretraining_tp": 1, "rms_norm_eps": llm["rms_norm_eps"],
        "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.37.2", "use_cache": True, "vocab_size": llm["vocab_size"] - 1,
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "mm_hidden_size": vision_hidden,
        "mm_patch_merge_type": "flat", "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": vision_dir, "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }
    if kind == "croc_llama":
        config["croc_stage"] = False
    return config


def released_tensors(kind: str, llm_dir: str, vision_hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    llm = load_file(str(Path(llm_dir, "model.safetensors")))
    tensors = {}
    for key, value in llm.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):  # no <image> row, as Vicuna's vocabulary
            value = torch.cat([value[:IMAGE_ROW], value[IMAGE_ROW + 1:]])
        tensors[key] = value.clone()
    hidden = tensors["model.norm.weight"].shape[0]
    tensors["model.mm_projector.0.weight"] = torch.randn(hidden, vision_hidden, generator=g) * 0.3
    tensors["model.mm_projector.0.bias"] = torch.randn(hidden, generator=g) * 0.1
    tensors["model.mm_projector.2.weight"] = torch.randn(hidden, hidden, generator=g) * 0.2
    tensors["model.mm_projector.2.bias"] = torch.randn(hidden, generator=g) * 0.1
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(8, generator=g)  # pre-4.31 checkpoints
    if kind == "croc_llama":
        tensors["model.mask_token"] = torch.randn(POOL_ROWS, hidden, generator=g)
        for name in ("query", "key", "value", "out"):
            tensors[f"model.cross_attention.{name}.weight"] = torch.randn(hidden, hidden, generator=g)
            tensors[f"model.cross_attention.{name}.bias"] = torch.randn(hidden, generator=g)
        tensors["transform_block.position_embeddings.weight"] = torch.randn(576, hidden, generator=g)
        tensors["transform_block.layers.0.attention.self.query.weight"] = torch.randn(hidden, hidden, generator=g)
        tensors["transform_block.resize.weight"] = torch.randn(hidden, hidden, generator=g)
        tensors["transform_block.resize.bias"] = torch.randn(hidden, generator=g)
    return tensors


def write_released(out, vision_dir: str, llm_dir: str, kind: str = "croc_llama", shards: int = 1,
                   pickle: bool = False, extra: dict | None = None, vision_hidden: int = 32) -> Path:
    """A released checkpoint directory: config.json, weights (single, sharded, or .bin), tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(released_config(kind, llm_dir, vision_dir, vision_hidden), indent=2))
    tensors = {**released_tensors(kind, llm_dir, vision_hidden), **(extra or {})}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    suffix, save = (".bin", lambda t, p: torch.save(t, p)) if pickle else (".safetensors", save_file)
    stem = "pytorch_model" if pickle else "model"
    if shards == 1:
        save(tensors, out / f"{stem}{suffix}")
    else:
        keys = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            name = f"{stem}-{i + 1:05d}-of-{shards:05d}{suffix}"
            part = {k: tensors[k] for k in keys[i::shards]}
            save(part, out / name)
            weight_map.update({k: name for k in part})
        index = f"{stem}{suffix}.index.json"
        (out / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    fake_tokenizer().save_pretrained(out)
    return out
