"""The published recipes say what docs/recipes.md says; images are padded, not cropped; grouped batching."""
import dataclasses
import enum
import json
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.data_loader import BatchSamplerShard
from PIL import Image
from torch.utils.data import BatchSampler
from transformers import AutoProcessor, TrainingArguments

from victor.config import ARGUMENT_CLASSES, ModelArguments, parse_recipe, yaml_to_argv
from victor.data.collate import LlavaCollator
from victor.data.llava import LlavaDataset, Sample
from victor.data.sampler import ModalityLengthGroupedSampler
from victor.model.assemble import build_model, with_aspect_ratio
from victor.train.run import make_model
from victor.train.trainer import VictorTrainer

RECIPES = resources.files("victor") / "recipes"
DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
STAGE_FILES = {"1": "stage1", "1.5": "stage1_5", "2": "stage2"}
GLOBAL_BATCH = {"1": 256, "1.5": 128, "2": 128}
DEFAULTS = {f.name: f.default for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def doc_rows(recipe: str) -> list[tuple[list[str], dict]]:
    """(stages, {option: value}) of every row of the recipe's table in docs/recipes.md."""
    section = DOC.read_text().split(f"\n## {recipe}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # `\|` stays in a cell
        if len(cells) != 6 or cells[0] in ("setting", "---"):
            continue
        stages = [s.strip() for s in cells[1].split(",")]
        assert set(stages) <= set(STAGE_FILES), f"{recipe}: bad stage cell {cells[1]!r}"
        pairs = {k: yaml.safe_load(v) for k, v in re.findall(r"`(\w+): ([^`]*)`", cells[4])}
        rows.append((stages, pairs))
    assert rows, f"no table for {recipe} in {DOC}"
    return rows


def declared(recipe: dict, key: str):
    """The recipe's value for `key`, or the option's default when the recipe leaves it out."""
    value = recipe[key] if key in recipe else DEFAULTS[key]
    return value.value if isinstance(value, enum.Enum) else value


def same(expected, actual) -> bool:
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        return float(expected) == float(actual)
    return expected == actual


@pytest.mark.parametrize("name", ["croc-7b", "victor-7b"])
def test_recipes_are_what_the_table_says(name):
    files = {stage: yaml.safe_load((RECIPES / name / f"{f}.yaml").read_text()) for stage, f in STAGE_FILES.items()}
    listed = {stage: set() for stage in STAGE_FILES}
    for stages, pairs in doc_rows(name):
        for stage in stages:
            for key, expected in pairs.items():
                assert key in DEFAULTS or key in files[stage], f"{name} stage {stage}: unknown option {key}"
                actual = declared(files[stage], key)
                assert same(expected, actual), f"{name} stage {stage}: {key} is {actual!r}, the table says {expected!r}"
                listed[stage].add(key)
    for stage, recipe in files.items():
        unlisted = set(recipe) - listed[stage]
        assert not unlisted, f"{name} stage {stage}: not in docs/recipes.md: {unlisted}"
        parsed = parse_recipe(RECIPES / name / f"{STAGE_FILES[stage]}.yaml", ["--use_cpu", "True", "--tf32", "False"])
        t = parsed.training
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps * 8 == GLOBAL_BATCH[stage]
        engine = Path(t.deepspeed)
        assert engine.is_file() and engine.name == ("zero2.json" if stage == "1" else "zero3.json")


def test_recipe_deepspeed_path_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = yaml_to_argv(RECIPES / "croc-7b" / "stage1_5.yaml")
    path = Path(argv[argv.index("--deepspeed") + 1])
    assert path.is_absolute() and path == Path(str(RECIPES / "deepspeed" / "zero3.json")).resolve()
    (tmp_path / "recipes" / "deepspeed").mkdir(parents=True)
    (tmp_path / "recipes" / "deepspeed" / "zero3.json").write_text("{}")  # a local file of that name wins
    argv = yaml_to_argv(RECIPES / "croc-7b" / "stage1_5.yaml")
    assert argv[argv.index("--deepspeed") + 1] == "recipes/deepspeed/zero3.json"
    (tmp_path / "r.yaml").write_text("deepspeed: nowhere/ds.json\n")
    assert yaml_to_argv(tmp_path / "r.yaml") == ["--deepspeed", "nowhere/ds.json"]  # left for DeepSpeed to refuse
    no_engine = parse_recipe(RECIPES / "croc-7b" / "stage1_5.yaml", ["--use_cpu", "True", "--tf32", "False",
                                                                    "--deepspeed", ""])
    assert no_engine.training.deepspeed == ""


# -- pad to square ------------------------------------------------------------------------------
def striped(width=64, height=32) -> Image.Image:
    """Red | green | green | blue vertical stripes: a centre crop sees only green."""
    img = Image.new("RGB", (width, height), (0, 200, 0))
    img.paste((255, 0, 0), (0, 0, width // 4, height))
    img.paste((0, 0, 255), (3 * width // 4, 0, width, height))
    return img


def assert_padded(pixels: torch.Tensor):
    """(3, H, W) normalised pixels of `striped()`: mean-colour bands above and below, both edges kept."""
    h = pixels.shape[-2]
    assert pixels[:, 0, :].abs().max() < 0.05 and pixels[:, -1, :].abs().max() < 0.05  # mean colour ~ 0
    assert pixels[0, h // 2, 0] > 0.9 and pixels[2, h // 2, 0] < 0  # red at the left edge
    assert pixels[2, h // 2, -1] > 0.9 and pixels[0, h // 2, -1] < 0  # blue at the right edge


def test_pad_is_saved_with_the_processor_and_used_in_training_and_inference(backbones, tmp_path):
    native_model, native = build_model(*backbones, chat_template="vicuna")
    model, processor = build_model(*backbones, chat_template="vicuna", image_aspect_ratio="pad")
    assert model.config.image_seq_length == native_model.config.image_seq_length  # same pixels out, same tokens
    crop = native.image_processor(striped(), return_tensors="pt")["pixel_values"][0]
    assert crop[:, 0, :].abs().max() > 1 and crop[0, 16, 0] < 0  # the native CLIP processor crops: green only

    processor.save_pretrained(tmp_path / "stage1")
    stock = AutoProcessor.from_pretrained(tmp_path / "stage1")  # stock transformers, no victor code
    assert type(stock.image_processor).__name__.startswith("LlavaImageProcessor") and stock.image_processor.do_pad
    collator = LlavaCollator(stock, model.config.image_seq_length, "chat", max_length=256)
    sample = Sample("0", [{"role": "user", "content": "<image>\ndescribe the image ."},
                          {"role": "assistant", "content": "a red and blue image ."}], [striped()], 0)
    batch = collator([sample])
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert_padded(batch["pixel_values"][0])
    text = stock.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                     add_generation_prompt=True)
    inputs = stock(text=text, images=striped(), return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], batch["pixel_values"])
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length


def test_later_stage_switches_a_saved_native_processor_to_pad(backbones, tmp_path):
    model, processor = build_model(*backbones, chat_template="vicuna")
    model.save_pretrained(tmp_path / "stage1")
    processor.save_pretrained(tmp_path / "stage1")
    _, loaded = make_model(ModelArguments(init_from=str(tmp_path / "stage1"), image_aspect_ratio="pad"))
    assert_padded(loaded.image_processor(striped(), return_tensors="pt")["pixel_values"][0])
    _, kept = make_model(ModelArguments(init_from=str(tmp_path / "stage1")))
    assert type(kept.image_processor).__name__.startswith("CLIPImageProcessor")  # unset: as saved
    back = with_aspect_ratio(loaded.image_processor, "native")
    assert torch.equal(back(striped(), return_tensors="pt")["pixel_values"],
                       kept.image_processor(striped(), return_tensors="pt")["pixel_values"])


def test_pad_keeps_a_siglip_style_processor_size():
    from transformers import SiglipImageProcessor

    pad = with_aspect_ratio(SiglipImageProcessor(size={"height": 32, "width": 32}), "pad")
    assert not pad.do_center_crop
    pixels = pad(striped(), return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 32, 32)
    assert_padded(pixels)


# -- grouped batching ---------------------------------------------------------------------------
def grouped_records(tmp_path, n_image=23, n_text=13) -> LlavaDataset:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    records = [{"id": f"i{k}", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\ndescribe"}, {"from": "gpt", "value": "word " * (1 + k % 7)}]}
        for k in range(n_image)]
    records += [{"id": f"t{k}", "conversations": [
        {"from": "human", "value": "say"}, {"from": "gpt", "value": "word " * (1 + k % 5)}]} for k in range(n_text)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return LlavaDataset(str(tmp_path / "d.json"), tmp_path)


def test_modality_lengths_are_read_from_records(tmp_path):
    dataset = grouped_records(tmp_path)
    lengths = dataset.modality_lengths
    assert lengths[0] == 3 and lengths[6] == 9 and lengths[23] == -2  # words; negative: text-only
    assert all(n > 0 for n in lengths[:23]) and all(n < 0 for n in lengths[23:])


def test_grouped_order_keeps_each_global_batch_to_one_modality(tmp_path):
    lengths = grouped_records(tmp_path).modality_lengths
    batch, world, accumulation = 2, 2, 2
    sampler = ModalityLengthGroupedSampler(lengths, batch, world * accumulation, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and order == list(sampler)  # a permutation, reproducible
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    mega = batch * world * accumulation
    full = (23 // mega - 1) + (13 // mega - 1)  # the last block of each modality joins the mixed tail
    blocks = [order[k:k + mega] for k in range(0, len(order), mega)]
    for block in blocks[:full]:
        assert len({lengths[i] > 0 for i in block}) == 1
        micro = [block[k:k + batch] for k in range(0, mega, batch)]
        totals = [sum(abs(lengths[i]) for i in m) for m in micro]
        assert max(totals) - min(totals) <= max(abs(lengths[i]) for i in block)  # balanced across devices/steps
    # two ranks, as accelerate shards the Trainer's loader: one optimizer step = one megabatch, on both
    ranks = [list(BatchSamplerShard(BatchSampler(sampler, batch, False), world, r)) for r in range(world)]
    for step in range(full):
        seen = [i for r in range(world) for b in ranks[r][step * accumulation:(step + 1) * accumulation] for i in b]
        assert sorted(seen) == sorted(blocks[step])


def test_trainer_uses_the_grouped_sampler(tmp_path):
    dataset = grouped_records(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, use_cpu=True, report_to="none", seed=5)
    trainer = VictorTrainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset,
                            data_collator=lambda samples: [s.index for s in samples], group_by_modality_length=True)
    batches = list(trainer.get_train_dataloader())
    lengths = dataset.modality_lengths
    steps = [batches[k] + batches[k + 1] for k in range(0, len(batches) - 1, 2)]
    assert all(len({lengths[i] > 0 for i in step}) == 1 for step in steps[:(23 // 4 - 1) + (13 // 4 - 1)])
    plain = VictorTrainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset,
                          data_collator=lambda samples: [s.index for s in samples])
    assert not isinstance(plain._get_train_sampler(), ModalityLengthGroupedSampler)
