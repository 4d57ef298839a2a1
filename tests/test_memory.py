"""`victor estimate-memory`: exact parameter counts from configs, ZeRO partitioning arithmetic."""
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from victor.config import ComprehensionConfig
from victor.model.assemble import build_model
from victor.model.comprehension import VisualComprehension
from victor.train.memory import count_parameters, estimate
from victor.train.stages import apply_freezing, modules_of, resolve_stage

RECIPES = Path(str(resources.files("victor") / "recipes"))


def test_counts_equal_the_assembled_model(backbones, tmp_path):
    """On local tiny backbones the meta-device count equals the real model's, module by module."""
    vision, llm = backbones
    recipe = tmp_path / "stage1_5.yaml"
    recipe.write_text(f"stage: '1.5'\nvision: {vision}\nllm: {llm}\npool_size: 64\nrecon_head: transformer\n"
                      f"data_path: x.json\noutput_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 2\n")
    counts, _ = count_parameters(recipe)
    model, _ = build_model(vision, llm)
    vc = VisualComprehension(model, ComprehensionConfig(pool_size=64, recon_head="transformer"))
    trainable = apply_freezing(vc, resolve_stage("1.5"))
    owner = modules_of(vc)
    real = {}
    for name, p in vc.named_parameters():
        real[owner[name]] = real.get(owner[name], 0) + p.numel()
    assert counts.total == real  # the tiny tokenizer already has <image>: no embedding resize
    assert counts.trainable == trainable
    assert counts.n_visual == model.config.image_seq_length


@pytest.mark.parametrize("recipe,llm,vision", [
    ("croc-7b/stage1_5.yaml", 6_738_415_616, 303_507_456),   # Llama-2-7B (Vicuna v1.5), CLIP ViT-L/14-336
    ("victor-7b/stage2.yaml", 7_615_616_512, 428_225_600),   # Qwen2.5-7B, SigLIP so400m/14-384 (with its head)
])
def test_published_backbones_have_their_published_sizes(recipe, llm, vision):
    counts, _ = count_parameters(RECIPES / recipe)
    assert counts.total["llm"] == llm and counts.total["vision"] == vision


def test_zero_stages_partition_as_documented():
    path = RECIPES / "croc-7b" / "stage1_5.yaml"
    z2, z3 = estimate(path, 8, 2), estimate(path, 8, 3)
    params = sum(z3["parameters"].values())
    trainable = sum(z3["trainable"].values())
    assert z2["bytes"]["weights"] == 2 * params and z3["bytes"]["weights"] == 2 * params / 8
    assert z2["bytes"]["gradients"] == z3["bytes"]["gradients"] == 2 * trainable / 8
    assert z3["bytes"]["optimizer"] == 12 * trainable / 8
    assert z3["bytes"]["activations_checkpointing"] < z3["bytes"]["activations_no_checkpointing"]
    one = estimate(path, 1, 3)
    assert one["bytes"]["optimizer"] == 8 * z3["bytes"]["optimizer"]
    offload = estimate(path, 8, 3, offload=True)
    assert offload["bytes"]["weights"] == offload["bytes"]["optimizer"] == 0


@pytest.mark.slow
def test_command_prints_the_table_and_refuses_unknown_backbones(tmp_path):
    out = subprocess.run([sys.executable, "-m", "victor.cli", "estimate-memory",
                          str(RECIPES / "victor-7b" / "stage1_5.yaml"), "--gpus", "8", "--zero", "3",
                          "--seq-len", "1024"], capture_output=True, text=True, check=True)
    assert "ZeRO-3" in out.stdout and "total, checkpointing on" in out.stdout and "x 1024 tokens" in out.stdout
    bad = tmp_path / "r.yaml"
    bad.write_text("stage: '1'\nvision: someone/unknown-vit\nllm: someone/unknown-llm\noutput_dir: o\n")
    proc = subprocess.run([sys.executable, "-m", "victor.cli", "estimate-memory", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "someone/unknown-vit: no local or cached config" in proc.stderr
