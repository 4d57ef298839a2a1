"""Model assembly from saved backbone directories (the real from_pretrained path, offline)."""
import subprocess
import sys

import pytest
import torch
from helpers import make_tokenizer
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    LlavaForConditionalGeneration,
)

from victor.model.assemble import AssemblyError, build_model, load_model
from victor.tiny.backbones import save_backbones


def prompt_inputs(processor, n=1):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]}],
        add_generation_prompt=True,
    )
    images = [Image.new("RGB", (40, 30), (200, 10 * i, 30)) for i in range(n)]
    return processor(text=[text] * n, images=images, return_tensors="pt")


def assert_backbones_loaded(model, vision_dir, llm_dir):
    """Every tensor of both saved backbones is in the assembled model, unchanged."""
    vs, ms = AutoModel.from_pretrained(vision_dir).state_dict(), model.model.vision_tower.state_dict()
    assert vs.keys() == ms.keys()
    for key in vs:
        assert torch.equal(vs[key], ms[key]), key
    lm = AutoModelForCausalLM.from_pretrained(llm_dir)
    ls, ms = lm.model.state_dict(), model.model.language_model.state_dict()
    assert ls.keys() == ms.keys()
    for key in ls:
        assert torch.equal(ls[key], ms[key]), key
    assert torch.equal(lm.lm_head.weight, model.lm_head.weight)


def test_clip_llama_weights_loaded_and_image_tokens_expanded(backbones, tiny_llava):
    model, processor = tiny_llava
    vision_dir, llm_dir = backbones
    assert model.config.image_seq_length == 16  # (32 / 8)^2 patches, CLS dropped by "default"
    assert processor.num_additional_image_tokens == 1
    inputs = prompt_inputs(processor)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert_backbones_loaded(model, vision_dir, llm_dir)
    assert model.config.image_token_id < model.config.text_config.vocab_size
    logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)


def test_siglip_qwen2_full_strategy(tmp_path):
    v, l = save_backbones(tmp_path, make_tokenizer(), vision="siglip", llm="qwen2", image_size=32, patch_size=8,
                          vision_hidden=32, llm_hidden=64, vision_layers=1, llm_layers=1)
    with pytest.raises(AssemblyError, match="no CLS"):
        build_model(v, l, vision_feature_select_strategy="default")
    model, processor = build_model(v, l, vision_feature_select_strategy="full", vision_feature_layer=-1)
    assert model.config.image_seq_length == 16 and processor.num_additional_image_tokens == 0
    assert model.config.text_config.model_type == "qwen2"
    inputs = prompt_inputs(processor, n=2)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 32
    assert torch.isfinite(model(**inputs).logits).all()
    assert_backbones_loaded(model, v, l)
    # SigLIP has no CLS token: "full" keeps every patch of the chosen layer, here the last one
    vision = AutoModel.from_pretrained(v).eval()
    with torch.no_grad():
        feats = vision(inputs["pixel_values"], output_hidden_states=True).hidden_states[-1]
        assert torch.allclose(model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0],
                              model.model.multi_modal_projector(feats)[0], atol=1e-6)


def test_save_reload_with_stock_transformers_identical_logits(tiny_llava, tmp_path):
    model, processor = tiny_llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    stock = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    stock_proc = AutoProcessor.from_pretrained(tmp_path)
    inputs = prompt_inputs(stock_proc, n=2)
    assert torch.equal(inputs["input_ids"], prompt_inputs(processor, n=2)["input_ids"])
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, stock.eval()(**inputs).logits)


def test_normalized_projector_is_its_own_type_and_never_loads_silently(backbones, tmp_path):
    model, processor = build_model(*backbones, normalize_projector=True)
    assert model.config.model_type == "victor_llava"
    feats = torch.randn(2, 16, model.config.vision_config.hidden_size)
    norms = model.model.multi_modal_projector(feats).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # stock class: fails while building the projector instead of silently dropping the norm
    with pytest.raises(KeyError, match=r"gelu\+l2norm"):
        LlavaForConditionalGeneration.from_pretrained(tmp_path)
    # stock Auto classes without victor imported: the checkpoint's own code is refused without trust_remote_code
    code = (f"from transformers import AutoModelForImageTextToText as A; A.from_pretrained({str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""}, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "trust_remote_code=True" in proc.stderr
    # victor's loader applies it
    loaded, _ = load_model(str(tmp_path))
    inputs = prompt_inputs(processor)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**inputs).logits, model.eval()(**inputs).logits)
