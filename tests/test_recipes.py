"""The published recipes parse, and their exact code path runs with tiny stand-ins of the same classes."""
import json
from importlib import resources

import pytest
from helpers import make_tokenizer
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from victor.config import parse_recipe
from victor.tiny.backbones import save_backbones
from victor.train.run import train_from_recipe

RECIPES = resources.files("victor") / "recipes"
# what each published recipe sets for stage 1.5 beyond the shared settings
STAGE15 = {"croc-7b": {"attention": "prefix", "recon_head": "transformer", "recon_target": "projector",
                       "recon_positions": "all"},
           "victor-7b": {"attention": "causal", "recon_head": "linear", "recon_target": "projector",
                         "recon_positions": "all"}}


@pytest.mark.parametrize("name", ["croc-7b", "victor-7b", "tiny"])
def test_recipes_parse_with_published_hyperparameters(name):
    # bf16/tf32 recipes are validated against the hardware: parse as a CPU run would
    parsed = {s: parse_recipe(RECIPES / name / f"{s}.yaml", ["--use_cpu", "True", "--tf32", "False"])
              for s in ("stage1", "stage1_5", "stage2")}
    r1, r15, r2 = parsed["stage1"], parsed["stage1_5"], parsed["stage2"]
    m1, st1, t1 = r1.model, r1.stage, r1.training
    d15, st15, c15, t15 = r15.data, r15.stage, r15.comprehension, r15.training
    st2, t2 = r2.stage, r2.training
    assert (st1.stage, st15.stage, st2.stage) == ("1", "1.5", "2")
    assert c15.mask_ratio == 0.75 and c15.matching == "hungarian" and c15.recon_weight == 10.0
    assert c15.recon_beta == 0.01 and c15.pool_lr == 1.5e-4
    if name == "tiny":
        return
    n_gpus = 8
    def global_batch(t):  # per device x accumulation x GPUs, as published
        return t.per_device_train_batch_size * t.gradient_accumulation_steps * n_gpus

    assert t1.learning_rate == 1e-3 and global_batch(t1) == 256
    assert global_batch(t15) == 128 and global_batch(t2) == 128
    assert m1.normalize_projector and c15.pool_size == 2048 and t15.bf16 and t15.activation_checkpointing
    if name == "croc-7b":
        assert (m1.vision, m1.llm) == ("openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")
        assert (c15.attention, c15.recon_head, st15.train_vision, t15.learning_rate) == ("prefix", "transformer", False, 2e-5)
        assert d15.max_length == 8192
    else:
        assert (m1.vision, m1.llm) == ("google/siglip2-so400m-patch14-384", "Qwen/Qwen2.5-7B-Instruct")
        assert m1.vision_feature_select_strategy == "full"
        assert (c15.attention, c15.recon_head, st15.train_vision, st15.vision_lr) == ("causal", "linear", True, 2e-6)
        assert (t15.learning_rate, st2.train_vision) == (1e-5, True)


@pytest.mark.parametrize("name,vision,llm", [("croc-7b", "clip", "llama"), ("victor-7b", "siglip", "qwen2")])
def test_recipe_code_path_with_tiny_stand_ins(name, vision, llm, tmp_path):
    v, l = save_backbones(tmp_path / "bb", make_tokenizer(chatml=(llm == "qwen2")), vision=vision, llm=llm,
                          image_size=32, patch_size=8, vision_hidden=32, llm_hidden=64, vision_layers=2, llm_layers=1)
    (tmp_path / "img").mkdir()
    records = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 200)).save(tmp_path / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image ."}, {"from": "gpt", "value": "a blue image ."}]})
    (tmp_path / "d.json").write_text(json.dumps(records))
    small = ["--data_path", str(tmp_path / "d.json"), "--image_root", str(tmp_path / "img"), "--max_steps", "2",
             "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none", "--bf16", "False",
             "--use_cpu", "True", "--dataloader_num_workers", "0", "--pool_size", "16", "--max_length", "256",
             "--tf32", "False", "--deepspeed", ""]  # one CPU process: no tf32, no DeepSpeed engine
    out = {s: tmp_path / s for s in ("stage1", "stage1_5", "stage2")}
    train_from_recipe(RECIPES / name / "stage1.yaml", small + ["--vision", v, "--llm", l, "--output_dir", str(out["stage1"])])
    for prev, stage in (("stage1", "stage1_5"), ("stage1_5", "stage2")):
        train_from_recipe(RECIPES / name / f"{stage}.yaml",
                          small + ["--init_from", str(out[prev]), "--output_dir", str(out[stage])])
    record = json.loads((out["stage1_5"] / "victor_stage.json").read_text())
    trainable = record["trainable_parameters"]
    assert (trainable["vision"] > 0) == (name == "victor-7b")
    # the recipe's stage-1.5 settings are the ones the run used (pool size from the command line)
    effective = record["comprehension_config"]
    assert {k: effective[k] for k in STAGE15[name]} == STAGE15[name]
    assert (effective["pool_size"], effective["mask_ratio"], effective["matching"]) == (16, 0.75, "hungarian")
    assert (effective["recon_weight"], effective["recon_beta"], effective["pool_lr"]) == (10.0, 0.01, 1.5e-4)
    # ... and built the head they name: its saved tensors, and exactly those trained
    extra = load_file(str(out["stage1_5"] / "comprehension.safetensors"))
    head = {k[len("head."):]: tuple(v.shape) for k, v in extra.items() if k.startswith("head.")}
    hidden, n_visual = 64, 16  # the stand-in LLM's width; (32 / 8)^2 patches
    assert extra["pool"].shape == (16, hidden) and trainable["pool"] == 16 * hidden
    assert head["proj.weight"] == (hidden, hidden)  # recon_target: projector (the LLM's width)
    if name == "croc-7b":  # learned positions + one BertLayer (the authors') + linear
        assert head["positions"] == (n_visual, hidden) and head["layer.attention.self.query.weight"] == (hidden, hidden)
        assert head["layer.intermediate.dense.weight"] == (4 * hidden, hidden)
        assert head["layer.output.LayerNorm.weight"] == (hidden,)
    else:
        assert set(head) == {"proj.weight", "proj.bias"}
    assert trainable["head"] == sum(extra[f"head.{k}"].numel() for k in head)
    model = AutoModelForImageTextToText.from_pretrained(out["stage2"])
    assert model.config.model_type == "victor_llava"  # both recipes normalise the projector
    assert model.config.text_config.model_type == llm
