"""`victor convert`: the authors' released layout -> our checkpoint, checked against a reference forward.

The reference is written here from the raw released tensors, independently of victor and of
transformers' LLaVA: pad the image to a square with the mean colour as LLaVA's
`expand2square` does, take the vision tower's hidden state at `mm_vision_select_layer`, drop
CLS, apply the projector MLP (Linear, GELU, Linear), L2-normalise (Croc), splice the result into
the LLM's input embeddings where `<image>` stands, and run the LLM.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tokenizer
from PIL import Image
from released import POOL_ROWS, fake_tokenizer, write_released
from safetensors.torch import load_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from victor.model.assemble import load_model
from victor.model.convert import ConversionError, convert
from victor.model.comprehension_state import STATE_FILE as EXTRA_STATE

QUESTION = "what colour is the circle ?"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny CLIP (3 layers, so that layer -2 is a real intermediate layer) + the conftest tiny Llama."""
    from victor.tiny.backbones import save_backbones

    return save_backbones(tmp_path_factory.mktemp("parts"), make_tokenizer(), image_size=32, patch_size=8,
                          vision_hidden=32, llm_hidden=64, vision_layers=3, llm_layers=2)


@pytest.fixture(scope="module")
def converted(parts, tmp_path_factory):
    """kind -> (released dir, converted dir), both kinds converted once."""
    root = tmp_path_factory.mktemp("released")
    out = {}
    for kind in ("croc_llama", "llava_llama"):
        src = write_released(root / kind, *parts, kind=kind)
        dst = root / f"{kind}-victor"
        convert(src, dst)
        out[kind] = (src, dst)
    return out


def expand2square(image: Image.Image, mean) -> Image.Image:
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in mean))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def sample_image():
    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(20, 44, 3, generator=g) * 255).to(torch.uint8).numpy())  # not square


@torch.no_grad()
def reference_logits(src: Path, vision_dir: str, image, before: list[int], after: list[int]) -> torch.Tensor:
    config = json.loads((src / "config.json").read_text())
    raw = load_file(str(src / "model.safetensors"))
    pixels = CLIPImageProcessor.from_pretrained(vision_dir)(
        expand2square(image, CLIPImageProcessor.from_pretrained(vision_dir).image_mean), return_tensors="pt"
    )["pixel_values"]
    tower = CLIPVisionModel.from_pretrained(vision_dir).eval()
    features = tower(pixels, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]][:, 1:]
    x = F.linear(features, raw["model.mm_projector.0.weight"], raw["model.mm_projector.0.bias"])
    x = F.linear(F.gelu(x), raw["model.mm_projector.2.weight"], raw["model.mm_projector.2.bias"])
    if config["model_type"] == "croc_llama":
        x = x / x.norm(dim=-1, keepdim=True)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["num_key_value_heads"],
        rms_norm_eps=config["rms_norm_eps"], max_position_embeddings=config["max_position_embeddings"],
        tie_word_embeddings=False)).eval()
    llm.load_state_dict({k: v for k, v in raw.items() if k.startswith(("model.layers.", "model.embed_tokens.",
                                                                        "model.norm.", "lm_head."))
                         and "rotary_emb" not in k})
    ids = torch.tensor([before + [0] * x.shape[1] + after])
    embeds = llm.get_input_embeddings()(ids)
    embeds[0, len(before):len(before) + x.shape[1]] = x[0]
    return llm(inputs_embeds=embeds).logits, pixels


@pytest.mark.parametrize("kind", ["croc_llama", "llava_llama"])
@torch.no_grad()
def test_converted_logits_equal_reference(converted, parts, kind):
    src, dst = converted[kind]
    model, processor = load_model(str(dst))
    model.eval()
    image = sample_image()
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": QUESTION}]}],
                                         add_generation_prompt=True)
    inputs = processor(text=text, images=image, return_tensors="pt")
    head, tail = text.split("<image>")
    tok = fake_tokenizer()
    before, after = tok(head, add_special_tokens=False).input_ids, tok(tail, add_special_tokens=False).input_ids
    image_id = model.config.image_token_id
    assert image_id == len(tok) and model.config.image_seq_length == 16  # <image> appended; 4x4 patches, no CLS
    assert inputs["input_ids"][0].tolist() == before + [image_id] * 16 + after

    reference, pixels = reference_logits(src, parts[0], image, before, after)
    assert torch.equal(inputs["pixel_values"], pixels)  # padded to a square with the mean colour, as LLaVA does
    logits = model(**inputs).logits
    assert logits.shape[-1] == reference.shape[-1] + 1
    diff = (logits[..., :-1] - reference).abs().max().item()
    print(f"{kind}: max |converted - reference| = {diff:.3g}")
    assert diff < 1e-5
    # the <image> row is the mean of the others: its logit is the mean logit, never the argmax
    assert torch.allclose(logits[..., -1], reference.mean(-1), atol=1e-5)
    assert model.generation_config.suppress_tokens == [image_id]


def test_converted_checkpoint_layout(converted, parts):
    src, dst = converted["croc_llama"]
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "victor_llava" and config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert {"configuration_victor_llava.py", "modeling_victor_llava.py"} <= {p.name for p in dst.iterdir()}
    processor = json.loads((dst / "processor_config.json").read_text())
    assert processor["image_processor"]["do_pad"] is True
    from victor.data.templates import VICUNA_CHAT_TEMPLATE

    assert (dst / "chat_template.jinja").read_text() == VICUNA_CHAT_TEMPLATE
    extra = load_file(str(dst / EXTRA_STATE))
    raw = load_file(str(src / "model.safetensors"))
    assert torch.equal(extra["pool"], raw["model.mask_token"]) and extra["pool"].shape == (POOL_ROWS, 64)
    assert bool(extra["pool_ready"]) and int(extra["usage"].sum()) == 0
    assert torch.equal(extra["croc_head.resize.weight"], raw["transform_block.resize.weight"])
    report = json.loads((dst / "victor_convert.json").read_text())
    assert report["normalized_projector"] and report["vision"] == parts[0]
    assert any("cross_attention" in note for note in report["notes"])
    assert not any("cross_attention" in k for k in load_file(str(dst / "model.safetensors")))

    plain = converted["llava_llama"][1]
    assert json.loads((plain / "config.json").read_text())["model_type"] == "llava"
    assert not (plain / EXTRA_STATE).exists()


def test_pool_continues_stage_1_5(converted):
    """The converted pool loads into stage 1.5's module as its pool."""
    from victor.config import ComprehensionConfig
    from victor.model.comprehension import VisualComprehension
    from victor.model.comprehension_state import load_state as load_extra_state

    src, dst = converted["croc_llama"]
    model, _ = load_model(str(dst))
    vc = VisualComprehension(model, ComprehensionConfig(pool_size=POOL_ROWS))
    state = load_extra_state(dst)
    vc.load_pool(state)
    assert torch.equal(vc.pool.detach(), load_file(str(src / "model.safetensors"))["model.mask_token"])


def test_unknown_key_is_named(parts, tmp_path):
    src = write_released(tmp_path / "src", *parts, extra={"model.image_newline": torch.zeros(64)})
    with pytest.raises(ConversionError, match=r"does not know: model\.image_newline"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharded_and_pickle_inputs(parts, converted, tmp_path):
    single = load_file(str(converted["croc_llama"][1] / "model.safetensors"))
    src = write_released(tmp_path / "sharded", *parts, shards=3)
    convert(src, tmp_path / "sharded-out")
    sharded = load_file(str(tmp_path / "sharded-out" / "model.safetensors"))
    assert single.keys() == sharded.keys() and all(torch.equal(single[k], sharded[k]) for k in single)

    src = write_released(tmp_path / "bin", *parts, shards=2, pickle=True)
    with pytest.raises(ConversionError, match="--allow-pickle"):
        convert(src, tmp_path / "bin-out")
    convert(src, tmp_path / "bin-out", allow_pickle=True)
    from_bin = load_file(str(tmp_path / "bin-out" / "model.safetensors"))
    assert all(torch.equal(single[k], from_bin[k]) for k in single)


def test_cli_convert(parts, tmp_path, capsys):
    from victor.cli import main

    src = write_released(tmp_path / "src", *parts)
    with pytest.raises(SystemExit, match="does not exist"):
        main(["convert", str(src), "--output", str(tmp_path / "bad"), "--vision", "/no/such/dir"])
    main(["convert", str(src), "--output", str(tmp_path / "out"), "--vision", parts[0]])
    out = capsys.readouterr().out
    assert "victor_llava" in out and "comprehension.safetensors" in out


def test_stage_1_5_continues_from_a_converted_release(converted, tmp_path):
    """`pool_init: checkpoint` starts from the released pool: after one step (Adam moves each entry by at most
    about pool_lr = 1.5e-4) it is still that pool, not one seeded from the data."""
    from victor.config import ConfigError
    from victor.train.run import train_from_recipe

    src, dst = converted["croc_llama"]
    test_image = sample_image()
    test_image.save(tmp_path / "0.png")
    (tmp_path / "d.json").write_text(json.dumps([{"id": "0", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\ndescribe ."}, {"from": "gpt", "value": "a picture ."}]}]))
    options = {"stage": "1.5", "init_from": str(dst), "data_path": str(tmp_path / "d.json"),
               "image_root": str(tmp_path), "output_dir": str(tmp_path / "out"), "use_cpu": "True",
               "pool_init": "checkpoint", "pool_size": "64", "max_length": "256", "max_steps": "1",
               "per_device_train_batch_size": "1", "report_to": "none", "save_strategy": "no"}
    argv = lambda **o: [x for k, v in (options | o).items() for x in (f"--{k}", v)]  # noqa: E731
    with pytest.raises(ConfigError, match="pool_init=checkpoint: the pool in .* has 2048 rows; set pool_size=2048"):
        train_from_recipe(None, argv())
    out = train_from_recipe(None, argv(pool_size=str(POOL_ROWS)))
    pool = load_file(str(Path(out) / EXTRA_STATE))["pool"]
    assert (pool - load_file(str(src / "model.safetensors"))["model.mask_token"]).abs().max() < 1e-3


def test_hub_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionError, match="DeepGlint-AI/LLaVA-v1.5-Croc-7b: not a directory, and the hub"):
        convert("DeepGlint-AI/LLaVA-v1.5-Croc-7b", tmp_path / "out")
