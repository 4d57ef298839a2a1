"""The published recipes say what docs/recipes.md says; images are padded, not cropped; grouped batching."""
import dataclasses
import enum
import json
import math
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
from victor.model.assemble import build_model, processed_image_size, with_aspect_ratio
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


# -- the effective configuration against the authors' values (recipes/authors.yaml) -------------
# What a published recipe's run actually uses, read from the built objects: TrainingArguments after
# __post_init__, the DeepSpeed config after transformers fills its "auto" values for 8 processes
# (computed here without launching), the image processor each stage builds and saves, the
# optimizer class the Trainer picks and the reconstruction head built on the meta device.
FACTS = yaml.safe_load((RECIPES / "authors.yaml").read_text())["facts"]
PUBLISHED = Path(__file__).resolve().parent / "data" / "published"
VISION_FILES = {"openai/clip-vit-large-patch14-336": PUBLISHED / "clip-vit-large-patch14-336",
                "google/siglip2-so400m-patch14-384": PUBLISHED / "siglip2-so400m-patch14-384"}
WORLD = 8  # the scripts' NUM_GPUS
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
# a fact's setting -> the docs/recipes.md row that states it (where a difference must say "differs")
DOC_SETTING = {"pool_init": "pool init", "matching": "matching", "pool_lr": "pool lr", "image_resample": "image resampling",
               "gradient_clipping": "gradient clipping", "loss_normalization": "loss normalisation",
               "optimizer": "optimizer"}


def doc_verdicts(recipe: str) -> list[tuple[str, list[str], str]]:
    """(setting, stages, verdict) of every row of the recipe's table in docs/recipes.md."""
    section = DOC.read_text().split(f"\n## {recipe}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 6 and cells[0] not in ("setting", "---"):
            rows.append((cells[0], [s.strip() for s in cells[1].split(",")], cells[5]))
    return rows


def build_training(path: Path):
    """The recipe parsed as `victor train` parses it (tf32's GPU check stubbed: the value is kept),
    and its DeepSpeed config filled by transformers' integration for WORLD processes."""
    import transformers.training_args as training_args_module
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_args_module, "is_torch_tf32_available", lambda: True)
        mp.setattr(training_args_module, "enable_tf32", lambda flag: None)
        recipe = parse_recipe(path, ["--use_cpu", "True"])  # use_cpu: where the arguments live, not what they say
        mp.setattr(TrainingArguments, "world_size", property(lambda self: WORLD))
        deepspeed = HfTrainerDeepSpeedConfig(recipe.training.deepspeed)
        deepspeed.trainer_config_process(recipe.training)
    return recipe, deepspeed.config


def stage_processors(name: str, tmp_path: Path) -> dict:
    """The image processor of each stage: stage 1 builds it from the encoder's published files, each
    later stage loads the one the stage before saved and applies its own options (as make_model does)."""
    from transformers import AutoImageProcessor

    from victor.model.assemble import image_processor_for

    processors, previous = {}, None
    for stage, file in STAGE_FILES.items():
        model = parse_recipe(RECIPES / name / f"{file}.yaml", ["--use_cpu", "True", "--tf32", "False"]).model
        base = AutoImageProcessor.from_pretrained(VISION_FILES[model.vision] if stage == "1" else previous)
        processor = image_processor_for(base, model.image_aspect_ratio, model.image_resample)
        previous = tmp_path / f"stage{file}"
        processor.save_pretrained(previous)
        processors[stage] = AutoImageProcessor.from_pretrained(previous)  # what the next stage and inference see
    return processors


def built_head(name: str, recipe):
    """The stage-1.5 model of the recipe on the meta device: (head, LLM hidden size)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from victor.model.comprehension import VisualComprehension
    from victor.train.memory import backbone_config, backbones_of

    vision, llm, first = backbones_of(RECIPES / name / "stage1_5.yaml")
    vcfg, tcfg = backbone_config(vision), backbone_config(llm)
    side = vcfg.image_size // vcfg.patch_size
    config = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_seq_length=side * side,
                         vision_feature_layer=first.vision_feature_layer)
    with torch.device("meta"):
        model = VisualComprehension(LlavaForConditionalGeneration(config), recipe.comprehension)
    return model.head, tcfg.hidden_size


def init_std_of(kind: str, dropout: float) -> float:
    """The weight std of a fresh (real, small) head of this kind: the init does not depend on width."""
    from victor.model.comprehension import ReconstructionHead

    torch.manual_seed(0)
    head = ReconstructionHead(kind, 256, 256, 64, dropout)
    weights = torch.cat([m.weight.detach().flatten() for m in head.modules() if isinstance(m, torch.nn.Linear)])
    assert all(torch.count_nonzero(m.bias) == 0 for m in head.modules() if isinstance(m, torch.nn.Linear))
    return float(weights.std())


def effective(name: str, stage: str, processors: dict) -> dict:
    recipe, ds = build_training(RECIPES / name / f"{STAGE_FILES[stage]}.yaml")
    t = recipe.training
    optimizer_cls, optimizer_kwargs = VictorTrainer.get_optimizer_cls_and_kwargs(t)
    assert tuple(optimizer_kwargs["betas"]) == (0.9, 0.999) and optimizer_kwargs["eps"] == 1e-8  # the Trainer's
    processor = processors[stage]
    values = {
        "world_size": WORLD,
        "per_device_train_batch_size": ds["train_micro_batch_size_per_gpu"],
        "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
        "global_batch": ds["train_batch_size"],
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": getattr(t.lr_scheduler_type, "value", t.lr_scheduler_type),
        "warmup_ratio": t.warmup_steps, "warmup_steps_of": t.get_warmup_steps,
        "weight_decay": t.weight_decay,
        "num_train_epochs": t.num_train_epochs,
        "bf16": t.bf16 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False,
        "tf32": t.tf32,
        "gradient_checkpointing": t.gradient_checkpointing,
        "max_length": recipe.data.max_length,
        "dataloader_drop_last": t.dataloader_drop_last,
        "group_by_modality_length": recipe.data.group_by_modality_length,
        "image_pad": bool(getattr(processor, "do_pad", False)),
        "image_resample": FILTERS[int(processor.resample)],
        "image_size": processed_image_size(processor),
        "deepspeed_zero_stage": ds["zero_optimization"]["stage"],
        # DeepSpeed clips at its gradient_clipping (0.0, its default, when the key is absent: no
        # clipping); the Trainer leaves clipping to DeepSpeed (accelerate's clip_grad_norm_ only reads the norm)
        "gradient_clipping": float(ds.get("gradient_clipping", 0.0)),
        "trainer_max_grad_norm": t.max_grad_norm,
        "optimizer": "adamw" if optimizer_cls is torch.optim.AdamW else optimizer_cls.__name__,
        "vision_lr": recipe.stage.vision_lr,
        "pool_lr": recipe.comprehension.pool_lr,
        # differs from the authors' "micro-batch", which docs/recipes.md declares until it lands
        "loss_normalization": recipe.stage.loss_normalization,
    }
    if stage == "1.5":
        c = recipe.comprehension
        head, hidden = built_head(name, recipe)
        values |= {"recon_head": c.recon_head, "recon_weight": c.recon_weight, "recon_beta": c.recon_beta,
                   "pool_size": c.pool_size, "pool_init": c.pool_init, "matching": c.matching,
                   "recon_head_init_std": init_std_of(c.recon_head, c.recon_head_dropout), "hidden": hidden}
        if c.recon_head == "transformer":
            layer = head.layer
            values |= {
                "recon_head_block": type(layer).__name__,
                "recon_head_heads": layer.attention.self.num_attention_heads,
                "recon_head_intermediate_size": layer.intermediate.dense.out_features,
                "recon_head_act": layer.intermediate.intermediate_act_fn.__class__.__name__,
                "recon_head_dropout": {layer.attention.self.dropout.p, layer.attention.output.dropout.p,
                                       layer.output.dropout.p},
                "recon_head_layer_norm_eps": {layer.attention.output.LayerNorm.eps, layer.output.LayerNorm.eps},
                "recon_head_positions": "learned" if head.positions.requires_grad and head.positions.shape[1] == hidden
                                        else "none",
            }
    return values


def matches(setting: str, authors, ours: dict) -> bool:
    """Whether our effective value is the authors' one (rules where the two are not stated alike)."""
    value = ours.get(setting)
    if setting == "warmup_ratio":  # their ratio: ceil(ratio x steps) warmup steps (transformers 4.x)
        return all(ours["warmup_steps_of"](n) == math.ceil(authors * n) for n in (1000, 5169, 37))
    if setting in ("recon_head_heads", "recon_head_intermediate_size"):
        hidden = ours["hidden"]
        return value == {"hidden // 64": hidden // 64, "4 * hidden": 4 * hidden}[authors]
    if setting == "recon_head_act":
        return authors == "gelu" and value == "GELUActivation"
    if setting in ("recon_head_dropout", "recon_head_layer_norm_eps"):
        return value == {authors}
    if setting == "recon_head_init_std":  # 6 standard errors of a sample std over 7 matrices of >= 65536 weights
        return abs(value - authors) < 6 * authors / math.sqrt(2 * 65536 * 7)
    if setting == "image_size":
        return value == (authors, authors)
    return same(authors, value)


@pytest.fixture(scope="module")
def effective_runs(tmp_path_factory):
    runs = {}
    for name in ("croc-7b", "victor-7b"):
        processors = stage_processors(name, tmp_path_factory.mktemp(name))
        for stage in STAGE_FILES:
            runs[name, stage] = effective(name, stage, processors)
    return runs


@pytest.mark.parametrize("name", ["croc-7b", "victor-7b"])
def test_effective_configuration_is_the_authors(name, effective_runs):
    """Every fact of recipes/authors.yaml against what our run uses; a difference fails unless the
    docs/recipes.md row for that setting and stage says "differs" (with its reason)."""
    verdicts = doc_verdicts(name)
    facts = [f for f in FACTS if f["recipe"] == name]
    assert len(facts) > 40
    undocumented = []
    for fact in facts:
        for stage in fact["stage"]:
            ours = effective_runs[name, stage]
            assert fact["setting"] in ours, f"{name} {stage}: no effective value for {fact['setting']}"
            if matches(fact["setting"], fact["value"], ours):
                continue
            row = DOC_SETTING.get(fact["setting"])
            said = [v for s, stages, v in verdicts if s == row and stage in stages]
            if not (said and said[0].startswith("differs")):
                undocumented.append(f"stage {stage} {fact['setting']}: authors {fact['value']!r} "
                                    f"({fact['file']}:{fact['line']}), ours {ours[fact['setting']]!r}")
    assert not undocumented, f"{name}: differs from the authors without a 'differs' row in docs/recipes.md:\n" + \
        "\n".join(undocumented)
    # global batch: their per-device batch x accumulation x GPUs, and DeepSpeed's filled train_batch_size
    for stage in STAGE_FILES:
        ours = effective_runs[name, stage]
        assert ours["global_batch"] == ours["per_device_train_batch_size"] * ours["gradient_accumulation_steps"] * WORLD
        assert ours["global_batch"] == GLOBAL_BATCH[stage]
        # clipping does not depend on the engine: without DeepSpeed the Trainer clips at max_grad_norm
        assert ours["trainer_max_grad_norm"] == ours["gradient_clipping"]


def test_the_check_fails_on_a_changed_value(effective_runs):
    """The comparison can fail: the Croc stage-1.5 effective values against altered authors' values."""
    ours = effective_runs["croc-7b", "1.5"]
    assert matches("gradient_clipping", 0.0, ours) and not matches("gradient_clipping", 1.0, ours)
    assert matches("warmup_ratio", 0.03, ours) and not matches("warmup_ratio", 0.05, ours)
    assert matches("recon_head_heads", "hidden // 64", ours) and ours["recon_head_heads"] == 64
    assert matches("recon_head_dropout", 0.1, ours) and not matches("recon_head_dropout", 0.0, ours)
    victor = effective_runs["victor-7b", "1.5"]
    assert victor["image_resample"] == "bicubic" and victor["image_size"] == (384, 384) and victor["image_pad"]
    assert effective_runs["victor-7b", "1"]["image_resample"] == "bicubic"  # the published file says bilinear


def test_image_resample_is_used_and_saved(tmp_path):
    """The option changes the pixels, and a saved processor keeps it."""
    from transformers import AutoImageProcessor

    from victor.model.assemble import image_processor_for

    hub = AutoImageProcessor.from_pretrained(VISION_FILES["google/siglip2-so400m-patch14-384"])
    image = striped(64, 32)
    for aspect in (None, "pad"):
        bicubic = image_processor_for(hub, aspect, "bicubic")
        bilinear = image_processor_for(hub, aspect, "bilinear")
        a = bicubic(image, return_tensors="pt")["pixel_values"]
        b = bilinear(image, return_tensors="pt")["pixel_values"]
        assert a.shape == b.shape == (1, 3, 384, 384) and (a - b).abs().max() > 0.05
        bicubic.save_pretrained(tmp_path / str(aspect))
        again = AutoImageProcessor.from_pretrained(tmp_path / str(aspect))
        assert int(again.resample) == 3 and torch.equal(again(image, return_tensors="pt")["pixel_values"], a)
    assert image_processor_for(hub, None, None) is hub
