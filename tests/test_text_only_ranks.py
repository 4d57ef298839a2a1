"""Sharded engines with text-only micro-batches on some ranks, and ZeRO-3 in bf16.

ZeRO-3 gathers each module's parameters when the module runs, so every rank must run the same
modules on every micro-batch: a rank whose micro-batch has no image runs the vision tower,
projector (and stage 1.5's matching and head) on a blank image whose tokens sit in padding
(`LlavaCollator.add_blank_image`). Without it the ranks' collectives disagree (gloo aborts with
a collective mismatch, NCCL hangs).
"""
import json

import pytest
from helpers import train_stage1
import torch
from PIL import Image
from safetensors.torch import load_file
from test_engines import DEEPSPEED, launch
from test_objective import stage15_args, weights

from victor.data.collate import LlavaCollator
from victor.train.run import train_from_recipe

ZERO3 = ["--deepspeed", str(DEEPSPEED / "zero3.json")]


@pytest.fixture(scope="module")
def mixed(backbones, tmp_path_factory):
    """Alternating image and text-only records: with batch 1 on 2 processes and a sequential
    order, rank 0 gets the images and rank 1 the text-only samples."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "img").mkdir()
    records = []
    for i in range(16):
        if i % 2 == 0:
            Image.new("RGB", (32, 32), (40 * (i % 6), 200, 20)).save(root / "img" / f"{i}.png")
            records.append({"id": str(i), "image": f"{i}.png", "conversations": [
                {"from": "human", "value": "<image>\ndescribe the image in detail ."},
                {"from": "gpt", "value": "the background is green . there are no objects ."}]})
        else:
            records.append({"id": str(i), "conversations": [
                {"from": "human", "value": "what colour is a circle ?"},
                {"from": "gpt", "value": "a circle is red" + " or blue" * (i % 3) + " ."}]})
    (root / "chat.json").write_text(json.dumps(records))
    train_stage1(backbones, root / "chat.json", root / "img", root / "s1", steps=1, batch=4)
    return root


def test_a_text_only_batch_gets_a_blank_image_in_padding(tiny_llava):
    from victor.data.llava import Sample

    model, processor = tiny_llava
    n_visual = model.config.image_seq_length
    collator = LlavaCollator(processor, n_visual, "chat", image_keys=True, blank_image=True)
    sample = Sample("t", [{"role": "user", "content": "what colour is a circle ?"},
                          {"role": "assistant", "content": "red ."}], [], 0)
    plain = LlavaCollator(processor, n_visual, "chat")([sample])
    batch = collator([sample])
    width = plain["input_ids"].shape[1]
    assert batch["input_ids"].shape == (1, width + n_visual) and batch["pixel_values"].abs().sum() == 0
    assert torch.equal(batch["input_ids"][:, :width], plain["input_ids"])
    assert (batch["input_ids"][0, width:] == collator.image_token_id).all()
    assert batch["attention_mask"][0, width:].sum() == 0 and (batch["labels"][0, width:] == -100).all()
    assert batch["image_keys"].tolist() == [-1]
    # the stock model's loss does not change: nothing attends to the blank tokens
    model.eval()
    with torch.no_grad():
        with_blank = model(**{k: v for k, v in batch.items() if k != "image_keys"})
        without = model(**plain)
    assert torch.allclose(with_blank.loss, without.loss, atol=1e-6)
    assert torch.allclose(with_blank.logits[:, :width], without.logits, atol=1e-5)


def test_the_blank_image_adds_nothing_to_stage15_losses_or_pool_usage(tiny_llava):
    from victor.config import ComprehensionConfig
    from victor.data.llava import Sample
    from victor.model.comprehension import VisualComprehension

    model, processor = tiny_llava
    vc = VisualComprehension(model, ComprehensionConfig(pool_size=32, pool_init="unit", recon_weight=10.0))
    vc.train()
    n_visual = model.config.image_seq_length
    text = Sample("t", [{"role": "user", "content": "what colour is a circle ?"},
                        {"role": "assistant", "content": "red ."}], [], 0)
    blank = LlavaCollator(processor, n_visual, "chat", image_keys=True, blank_image=True)([text])
    plain = LlavaCollator(processor, n_visual, "chat", image_keys=True)([text])
    with_blank, without = vc(**blank), vc(**plain)
    assert float(with_blank["recon_loss"]) == 0.0 and int(vc.usage.sum()) == 0
    assert torch.allclose(with_blank["loss"], without["loss"], atol=1e-6)
    assert vc.recon_items(blank["input_ids"], blank["attention_mask"]) == 0
    # every module the image path runs gets a gradient (zeros), so sharded engines reduce the same tensors
    with_blank["loss"].backward()
    assert vc.pool.grad is not None and float(vc.pool.grad.abs().sum()) == 0.0
    assert all(p.grad is not None for p in vc.head.parameters())
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())
    model.zero_grad(set_to_none=True)  # the model is the session's fixture


def stage2_args(root, out, extra=()):
    return ["--stage", "2", "--init_from", str(root / "s1"), "--data_path", str(root / "chat.json"),
            "--image_root", str(root / "img"), "--output_dir", str(out), "--per_device_train_batch_size", "1",
            "--max_steps", "3", "--optim", "sgd", "--learning_rate", "0.05", "--logging_steps", "1",
            "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True", "--seed", "0", "--warmup_steps", "0",
            "--train_sampling_strategy", "sequential", "--disable_tqdm", "True", *extra]


def differences(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def text_only_on_one_rank_only(out) -> bool:
    per_rank = json.loads((out / "victor_stage.json").read_text())["text_only_micro_batches"]
    assert len(per_rank) == 2
    return bool(set(per_rank[0]) ^ set(per_rank[1]))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["2", "1.5"])
def test_zero3_with_text_only_micro_batches_on_one_rank_trains_what_ddp_trains(mixed, tmp_path, stage):
    def args(out, extra):
        if stage == "2":
            return stage2_args(mixed, out, extra)
        return stage15_args(mixed, out, 1, 1, extra=["--optim", "sgd", "--learning_rate", "0.05", *extra])

    launch(args(tmp_path / "ddp", []))
    launch(args(tmp_path / "zero3", ZERO3))
    assert text_only_on_one_rank_only(tmp_path / "zero3") and text_only_on_one_rank_only(tmp_path / "ddp")
    if stage == "2":
        a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ddp", "zero3"))
    else:
        a, b = weights(tmp_path / "ddp"), weights(tmp_path / "zero3")
    assert differences(a, b) <= 1e-5


@pytest.mark.slow
def test_zero3_in_bf16_runs_stage15_and_saves_a_checkpoint_that_reloads_equal(mixed, tmp_path):
    """The 7B recipes' engine and precision, one process: the pool and head are built in the
    LLM's dtype, so ZeRO-3 flattens one dtype (before: an assertion inside deepspeed.initialize)."""
    from victor.model.assemble import load_model
    from victor.model.comprehension_state import load_state as load_extra_state

    out = tmp_path / "z3bf16"
    launch(stage15_args(mixed, out, 2, 1, steps=2, extra=[*ZERO3, "--bf16", "True", "--recon_head", "transformer",
                                                          "--save_strategy", "steps", "--save_steps", "2"]), nproc=1)
    final, checkpoint = weights(out), weights(out / "checkpoint-2")
    assert final.keys() == checkpoint.keys()
    assert all(torch.equal(final[k], checkpoint[k]) for k in final)
    assert final["extra.pool"].dtype == torch.bfloat16 and final["extra.head.proj.weight"].dtype == torch.bfloat16
    # the saved stage loads back (stock LLaVA + the pool and head) to the same tensors
    model, _ = load_model(str(out))
    saved = load_file(str(out / "model.safetensors"))
    live = {k: v for k, v in model.state_dict().items()}
    assert sum(v.numel() for v in saved.values()) == sum(v.numel() for v in live.values())
    extra = load_extra_state(str(out))
    assert torch.equal(extra["pool"], final["extra.pool"])
    history = json.loads((out / "victor_stage.json").read_text())["log_history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history if "loss" in h)


@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3"])
@pytest.mark.parametrize("mode", ["prefix", "bidirectional-visual"])
def test_a_mask_the_kernel_cannot_apply_is_refused_before_loading(mixed, tmp_path, monkeypatch, kernel, mode):
    from victor.config import ConfigError
    from victor.model import assemble

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(assemble, "load_model", no_loading)
    monkeypatch.setattr("victor.train.run.load_model", no_loading)
    with pytest.raises(ConfigError, match=rf"attention='{mode}' needs a mask that attn_implementation='{kernel}' "
                                          r"cannot apply .* use attn_implementation eager, sdpa, flex_attention"):
        train_from_recipe(None, stage15_args(mixed, tmp_path / "x", 2, 1, extra=["--attention", mode,
                                                                                  "--attn_implementation", kernel]))


def test_the_module_refuses_a_model_loaded_with_a_padding_only_kernel(tiny_llava):
    from victor.config import ComprehensionConfig
    from victor.model.comprehension import VisualComprehension

    model, _ = tiny_llava
    saved = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="silently run causal"):
            VisualComprehension(model, ComprehensionConfig(pool_size=32, pool_init="unit", attention="prefix"))
        VisualComprehension(model, ComprehensionConfig(pool_size=32, pool_init="unit", attention="causal"))
    finally:
        model.config.text_config._attn_implementation = saved


def test_the_stage15_forward_without_labels_returns_logits_and_no_loss(tiny_llava):
    from victor.config import ComprehensionConfig
    from victor.data.llava import Sample
    from victor.model.comprehension import VisualComprehension

    model, processor = tiny_llava
    vc = VisualComprehension(model, ComprehensionConfig(pool_size=32, pool_init="unit"))
    vc.eval()
    n_visual = model.config.image_seq_length
    from PIL import Image as PILImage
    sample = Sample("i", [{"role": "user", "content": "<image>\ndescribe ."}, {"role": "assistant", "content": "red ."}],
                    [PILImage.new("RGB", (32, 32), (200, 10, 10))], 0)
    batch = LlavaCollator(processor, n_visual, "chat", image_keys=True)([sample])
    with torch.no_grad():
        out = vc(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_keys=batch["image_keys"])
        supervised = vc(**batch)
    assert out["loss"] is None and supervised["loss"] is not None
    assert torch.allclose(out["logits"], supervised["logits"], atol=1e-5)  # same masks, same matches
