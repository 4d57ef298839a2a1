"""LoRA (victor.train.lora): adapters on the LLM only, projector/pool/head in full, a stage saved as a
stock base checkpoint + peft adapter, `victor merge` folding it in with the adapted model's logits,
resume, and 2 processes (DDP, ZeRO-2) training what one process trains."""
import json
import os
import shutil
import socket
import subprocess
import sys
from importlib import resources

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

from helpers import COLOURS, corpus_dir, train_stage1

from victor.cli import main
from victor.config import ConfigError, StageArguments
from victor.data.collate import LlavaCollator
from victor.data.llava import Sample
from victor.model.assemble import build_model, load_model
from victor.model.adapter import ADAPTER_DIR
from victor.model.merge import merge
from victor.train.lora import apply_lora, save_lora_llava
from victor.train.run import train_from_recipe
from victor.train.stages import apply_freezing, resolve_stage

peft = pytest.importorskip("peft")
DEEPSPEED = resources.files("victor") / "recipes" / "deepspeed"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def batch_of(processor, model, n=2):
    collator = LlavaCollator(processor, model.config.image_seq_length, "chat", 256)
    samples = [Sample(str(i), [{"role": "user", "content": "<image>\ndescribe the image ."},
                               {"role": "assistant", "content": f"a {c} image ."}],
                      [Image.new("RGB", (32, 32), COLOURS[c])]) for i, c in enumerate(list(COLOURS)[:n])]
    batch = collator(samples)
    batch.pop("labels")
    return batch


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def lora_args(**kw):
    return StageArguments(stage="2", lora_r=4, lora_alpha=8.0, lora_dropout=0.0, **kw)


@pytest.mark.parametrize("normalize", [False, True])
def test_merged_checkpoint_gives_the_adapted_logits_and_loads_like_the_unmerged_one(backbones, tmp_path, normalize):
    model, processor = build_model(*backbones, normalize_projector=normalize)
    stage = resolve_stage("2")
    counts = apply_lora(model, stage, lora_args(), apply_freezing(model, stage))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n or "multi_modal_projector" in n for n in names)
    assert counts["vision"] == 0 and counts["projector"] > 0 and counts["llm"] > 0
    assert not any("vision_tower" in n and ".lora_" in n for n, _ in model.named_parameters())
    assert not any(n.startswith("lm_head") and ".lora_" in n for n, _ in model.named_parameters())
    torch.manual_seed(0)
    for n, p in model.named_parameters():  # lora_B starts at zero: make the adapter do something
        if ".lora_B" in n:
            p.data.normal_(0, 0.2)
    batch = batch_of(processor, model)
    adapted = logits(model, batch)
    stage_dir, merged_dir = tmp_path / "stage", tmp_path / "merged"
    save_lora_llava(model, model.state_dict(), str(stage_dir))
    processor.save_pretrained(stage_dir)
    assert (stage_dir / ADAPTER_DIR / "adapter_config.json").is_file()
    auto = AutoModelForImageTextToText if normalize else LlavaForConditionalGeneration
    base = auto.from_pretrained(stage_dir)  # the unmerged stage loads as a stock (base) checkpoint ...
    assert not any(".lora_" in k or "base_layer" in k for k in base.state_dict())
    unmerged = peft.PeftModel.from_pretrained(base, str(stage_dir / ADAPTER_DIR))  # ... and its adapter with peft
    assert torch.allclose(logits(unmerged, batch), adapted, atol=1e-5)
    merge(str(stage_dir), str(merged_dir))
    merged = auto.from_pretrained(merged_dir)  # loads as the unmerged one does
    assert type(merged) is type(base) and not (merged_dir / ADAPTER_DIR).exists()
    if normalize:  # the checkpoint's own code travels with it (trust_remote_code where victor is absent)
        assert {p.name for p in stage_dir.glob("*.py")} <= {p.name for p in merged_dir.glob("*.py")}
        assert json.loads((merged_dir / "config.json").read_text())["auto_map"] == \
            json.loads((stage_dir / "config.json").read_text())["auto_map"]
    assert torch.allclose(logits(merged, batch), adapted, atol=1e-5), (logits(merged, batch) - adapted).abs().max()
    loaded, _ = load_model(str(stage_dir))  # victor's loader merges an unmerged stage itself
    assert torch.allclose(logits(loaded, batch), adapted, atol=1e-5)


def test_lora_options_are_checked(backbones):
    model, _ = build_model(*backbones)
    with pytest.raises(ConfigError, match="no linear layer named nope"):
        apply_lora(model, resolve_stage("2"), lora_args(lora_target_modules="q_proj,nope"), {})
    with pytest.raises(ConfigError, match="lora_r=4: stage 1 does not train the LLM"):  # an option rule (config)
        StageArguments(stage="1", lora_r=4).validate()
    counts = apply_lora(model, resolve_stage("2", train_vision=True), lora_args(lora_target_modules="q_proj,v_proj",
                                                                               lora_vision=True), {})
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_" in n}
    assert adapted == {"q_proj", "v_proj"} and counts["vision"] > 0
    assert any("vision_tower" in n and ".lora_" in n for n, _ in model.named_parameters())
    assert not any(p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n and ".lora_" not in n)


# -- real stages ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(backbones, colour_corpus, tmp_path_factory):
    root = corpus_dir(colour_corpus, tmp_path_factory.mktemp("lora"), chat_json="chat.json")
    train_stage1(backbones, root / "chat.json", root / "img", root / "s1", steps=1)
    return root


def stage(root, out, name="1.5", batch=8, steps=4, extra=()):
    return ["--stage", name, "--init_from", str(root / "s1"), "--pool_size", "32", "--data_path",
            str(root / "chat.json"), "--image_root", str(root / "img"), "--output_dir", str(out),
            "--per_device_train_batch_size", str(batch), "--max_steps", str(steps), "--learning_rate", "5e-3",
            "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
            "--seed", "0", "--data_seed", "0", "--warmup_steps", "0", "--disable_tqdm", "True",
            "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", *extra]


def adapter(out):
    return load_file(str(out / ADAPTER_DIR / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def one_process(setup):
    out = setup / "one"
    train_from_recipe(None, stage(setup, out))
    return out


def test_without_peft_plain_stages_load_and_a_lora_stage_names_what_it_needs(setup, one_process, monkeypatch):
    """peft is an extra (victor[lora]): a stage without adapter/ must load without it (CI's web
    environment has no peft and caught load_model importing it unconditionally)."""
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    model, _ = load_model(str(setup / "s1"))
    assert isinstance(model, LlavaForConditionalGeneration)
    with pytest.raises(ConfigError, match=r"LoRA stage .*needs peft .*victor\[lora\].*victor merge"):
        load_model(str(one_process))


def test_a_lora_stage_saves_base_and_adapter_and_merges(setup, one_process, tmp_path, capsys):
    out = one_process
    rec = json.loads((out / "victor_stage.json").read_text())
    trainable = rec["trainable_parameters"]
    assert trainable["pool"] > 0 and trainable["head"] > 0 and trainable["projector"] > 0 and trainable["vision"] == 0
    llm_full = sum(v.numel() for k, v in load_file(str(setup / "s1" / "model.safetensors")).items()
                   if "language_model" in k or k.startswith("lm_head"))
    assert 0 < trainable["llm"] < llm_full / 10  # adapters only
    assert (out / "comprehension.safetensors").is_file()
    before, after = load_file(str(setup / "s1" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for key in before:  # the base LLM is what was loaded; the projector trained in full
        same = torch.equal(before[key], after[key])
        assert same == ("multi_modal_projector" not in key), key
    weights = adapter(out)
    assert weights and any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    main(["merge", str(out), "--output", str(tmp_path / "merged")])
    assert "a stock checkpoint" in capsys.readouterr().out
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "comprehension.safetensors").is_file()
    model, processor = load_model(str(out))
    batch = batch_of(processor, model)
    assert torch.allclose(logits(merged, batch), logits(model, batch), atol=1e-5)
    assert not torch.allclose(logits(LlavaForConditionalGeneration.from_pretrained(out), batch),
                              logits(model, batch), atol=1e-3)  # the adapter changes the model
    with pytest.raises(SystemExit, match="not a stage trained with LoRA"):
        main(["merge", str(setup / "s1"), "--output", str(tmp_path / "x")])


def test_lora_stage2_from_a_lora_stage_and_resume_is_exact(setup, one_process, tmp_path):
    """init_from an unmerged LoRA stage (merged on load); a LoRA run resumed at step 2 of 4 ends
    with the same adapter and projector as the uninterrupted run."""
    def run(out, extra=()):
        args = stage(setup, out, name="2", batch=4, extra=["--save_strategy", "steps", "--save_steps", "2", *extra])
        args[args.index("--init_from") + 1] = str(one_process)
        train_from_recipe(None, args)

    run(tmp_path / "full")
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    run(tmp_path / "resumed", ["--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-2")])
    for name in (ADAPTER_DIR + "/adapter_model.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_two_processes_train_the_adapter_one_process_trains(setup, one_process, engine):
    out = setup / engine
    extra = ["--deepspeed", str(DEEPSPEED / "zero2.json")] if engine == "zero2" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "victor.cli", "train", *stage(setup, out, batch=4, extra=extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours, ref = adapter(out), adapter(one_process)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.allclose(ours[key].float(), ref[key].float(), atol=5e-6), (key, (ours[key] - ref[key]).abs().max())
    base = load_file(str(out / "model.safetensors"))
    assert base.keys() == load_file(str(one_process / "model.safetensors")).keys()
    assert json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 4
