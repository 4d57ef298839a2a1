"""A few real Trainer steps per stage: what is frozen, losses fall, checkpoints load in stock transformers."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainerCallback

from helpers import COLOURS

from victor.config import parse_recipe
from victor.train.run import train_from_recipe, train_stage

@pytest.fixture(scope="module")
def data(colour_corpus):
    return colour_corpus


def common(data, out, data_file, steps=24, lr="5e-3"):
    return ["--data_path", str(data / data_file), "--image_root", str(data / "img"), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--max_steps", str(steps), "--learning_rate", lr,
            "--logging_steps", "6", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
            "--seed", "0", "--warmup_steps", "0"]


def losses(out, key="loss"):
    history = json.loads((out / "victor_stage.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after, part):
    return any(not torch.equal(before[k], after[k]) for k in before if part in k)


class KeepModel(TrainerCallback):
    """Holds on to the model the Trainer trained, as it is in memory when training ends."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


class StepsRun(TrainerCallback):
    """The global step after each optimizer step this process runs."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.fixture(scope="module")
def runs(backbones, data, tmp_path_factory):
    """Stages 1, 1.5 and 2 in a row; for 1.5 and 2 also the trained model as it was in memory at the end."""
    out = tmp_path_factory.mktemp("runs")
    vision, llm = backbones
    s1 = out / "s1"
    train_from_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm] + common(data, s1, "captions.json"))
    s15, keep15 = out / "s15", KeepModel()
    train_stage(parse_recipe(None, ["--stage", "1.5", "--init_from", str(s1), "--pool_size", "32", "--attention",
                                    "prefix", "--recon_head", "transformer", "--llm_lr", "2e-3"]
                             + common(data, s15, "chat.json", 30, "2e-3")), callbacks=[keep15])
    s2, keep2 = out / "s2", KeepModel()
    train_stage(parse_recipe(None, ["--stage", "2", "--init_from", str(s15)] + common(data, s2, "chat.json", 48, "3e-3")),
                callbacks=[keep2])
    return {"paths": (s1, s15, s2), "trained": {"1.5": keep15.model.eval(), "2": keep2.model.eval()}}


@pytest.fixture(scope="module")
def stage_outputs(runs):
    return runs["paths"]


def test_stage1_trains_only_the_projector_and_loss_falls(stage_outputs, tiny_llava):
    s1, _, _ = stage_outputs
    record = json.loads((s1 / "victor_stage.json").read_text())
    counts = record["trainable_parameters"]
    assert counts["projector"] > 0 and counts["llm"] == counts["vision"] == 0
    assert record["template"] == "plain"
    trained = LlavaForConditionalGeneration.from_pretrained(s1).state_dict()
    initial = tiny_llava[0].state_dict()
    assert changed(initial, trained, "multi_modal_projector")
    assert not changed(initial, trained, "language_model") and not changed(initial, trained, "vision_tower")
    curve = losses(s1)
    assert curve[-1] < curve[0] - 0.1, curve  # a random tiny LLM, only the projector moves


def test_stage15_losses_fall_and_pool_is_saved_beside_a_stock_checkpoint(stage_outputs):
    s1, s15, _ = stage_outputs
    lm, recon = losses(s15, "lm_loss"), losses(s15, "recon_loss")
    assert lm[-1] < lm[0] and recon[-1] < recon[0], (lm, recon)
    assert losses(s15, "pool/rows_used_run")[-1] > 1
    extra = load_file(str(s15 / "comprehension.safetensors"))
    assert extra["pool"].shape == (32, 64) and "head.positions" in extra
    stock = LlavaForConditionalGeneration.from_pretrained(s15)  # no pool/head keys inside
    keys = set(load_file(str(s15 / "model.safetensors")))
    assert not any("pool" in k or k.startswith("head.") for k in keys)
    before = LlavaForConditionalGeneration.from_pretrained(s1).state_dict()
    after = stock.state_dict()
    assert changed(before, after, "language_model") and not changed(before, after, "vision_tower")


def test_stage2_checkpoint_reloads_with_identical_logits(stage_outputs):
    _, _, s2 = stage_outputs
    record = json.loads((s2 / "victor_stage.json").read_text())
    assert record["trainable_parameters"]["llm"] > 0 and record["trainable_parameters"]["pool"] == 0
    model = LlavaForConditionalGeneration.from_pretrained(s2).eval()
    processor = AutoProcessor.from_pretrained(s2)
    text = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "describe the image in detail ."}]}], add_generation_prompt=True)
    inputs = processor(text=text, images=Image.new("RGB", (32, 32), COLOURS["blue"]), return_tensors="pt")
    again = LlavaForConditionalGeneration.from_pretrained(s2).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "blue" in answer, answer  # it learned the one fact in the data


def blue_image_inputs(out):
    processor = AutoProcessor.from_pretrained(out)
    text = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "describe the image in detail ."}]}], add_generation_prompt=True)
    return processor(text=text, images=Image.new("RGB", (32, 32), COLOURS["blue"]), return_tensors="pt")


def test_saved_checkpoints_hold_the_trained_models(runs):
    """What each stage saves is the model it trained: reloaded, the same weights and the same logits."""
    _, s15, s2 = runs["paths"]
    inputs = blue_image_inputs(s2)
    trained = runs["trained"]["2"]
    reloaded = LlavaForConditionalGeneration.from_pretrained(s2).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, trained(**inputs).logits)
    trained = runs["trained"]["1.5"]  # VisualComprehension: LLaVA as a stock checkpoint, pool + head beside it
    reloaded = LlavaForConditionalGeneration.from_pretrained(s15).eval()
    live, saved = trained.llava.state_dict(), reloaded.state_dict()
    assert live.keys() == saved.keys()
    for key in live:
        assert torch.equal(saved[key], live[key]), key
    extra = load_file(str(s15 / "comprehension.safetensors"))
    assert extra.keys() == trained.extra_state_dict().keys()
    for key, value in trained.extra_state_dict().items():
        assert torch.equal(extra[key], value), key
    assert int(extra["usage"].sum()) == 30 * 8 * 12  # 30 steps x 8 images x 12 masked tokens, each counted
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, trained.llava(**inputs).logits)


def test_per_module_learning_rates(backbones, data, tmp_path):
    from victor.model.assemble import build_model
    from victor.train.stages import apply_freezing, resolve_stage
    from victor.train.trainer import VictorTrainer

    model, processor = build_model(*backbones)
    apply_freezing(model, resolve_stage("2", train_vision=True))
    args = parse_recipe(None, common(data, tmp_path, "chat.json")).training
    trainer = VictorTrainer(model=model, args=args, processing_class=processor,
                            module_lrs={"projector": 1e-3, "vision": 2e-6, "llm": None})
    groups = {(g["module"], g["weight_decay"] > 0 or args.weight_decay == 0): g["lr"]
              for g in trainer.create_optimizer().param_groups}
    assert {m: lr for (m, _), lr in groups.items()} == {"projector": 1e-3, "vision": 2e-6, "llm": 5e-3}


def test_recipe_yaml_with_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: '1.5'\nllm: x\nvision: y\nmax_steps: 5\noutput_dir: o\nattention: prefix\n")
    r = parse_recipe(recipe, ["--max_steps", "7", "--pool_size", "64"])
    model, stage, comp, training = r.model, r.stage, r.comprehension, r.training
    assert (stage.stage, training.max_steps, comp.attention, comp.pool_size, model.llm) == ("1.5", 7, "prefix", 64, "x")
    with pytest.raises(SystemExit, match="--no_such_option"):
        parse_recipe(recipe, ["--no_such_option", "1"])


def test_stage15_resume_from_checkpoint_is_exact(backbones, data, stage_outputs, tmp_path):
    """Resuming from step 4 of 8 ends with the same weights, pool and head as the uninterrupted run."""
    s1 = stage_outputs[0]
    base = ["--stage", "1.5", "--init_from", str(s1), "--pool_size", "32", "--save_strategy", "steps",
            "--save_steps", "4", "--data_seed", "0"]

    def run(out, extra=()):
        args = common(data, out, "chat.json", 8, "2e-3")
        args[args.index("--save_strategy") + 1] = "steps"
        args[args.index("--logging_steps") + 1] = "1"
        steps = StepsRun()
        train_stage(parse_recipe(None, base + args + list(extra)), callbacks=[steps])
        return steps.steps

    import shutil

    assert run(tmp_path / "full") == list(range(1, 9))
    # what a run killed after step 4 leaves behind is the same checkpoint-4
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    steps = run(tmp_path / "resumed", ["--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-4")])
    assert steps == [5, 6, 7, 8]  # the optimizer steps this process took
    full, resumed = (json.loads((tmp_path / d / "victor_stage.json").read_text()) for d in ("full", "resumed"))
    assert (full["resumed_from"], full["steps_run"]) == (None, 8)
    assert resumed["resumed_from"] == str(tmp_path / "resumed" / "checkpoint-4") and resumed["steps_run"] == 4
    # steps 1-4 come from the checkpoint's history, 5-8 were run again: all as in the uninterrupted run
    logged = {h["step"]: h for h in resumed["log_history"] if "lm_loss" in h}
    assert sorted(logged) == list(range(1, 9))
    for h in full["log_history"]:
        if "lm_loss" in h:
            for key in ("loss", "lm_loss", "recon_loss", "pool/rows_used_run", "match/mean_cost"):
                assert h[key] == logged[h["step"]][key], (h["step"], key)
    for name in ("model.safetensors", "comprehension.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)  # bit for bit, as the README says


@pytest.mark.slow
def test_two_process_ddp_stage15_loss_composition(stage_outputs, data, tmp_path):
    """torchrun with 2 CPU processes (gloo): trains, and the logged loss is lm + 10 * recon."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = common(data, out, "chat.json", 4, "1e-3")
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    args[args.index("--logging_steps") + 1] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "victor.cli", "train", "--stage", "1.5", "--init_from", str(stage_outputs[0]),
           "--pool_size", "32", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [h for h in json.loads((out / "victor_stage.json").read_text())["log_history"] if "lm_loss" in h]
    assert len(history) == 4
    for h in history:
        assert h["loss"] == pytest.approx(h["lm_loss"] + 10 * h["recon_loss"], rel=0.02)
