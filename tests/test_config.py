"""Option values are each dataclass's own rules (`validate` in victor.config), checked without
touching the file system or loading anything; every message names the option."""
import dataclasses

import pytest

from victor.config import ComprehensionConfig, ConfigError, DataArguments, ModelArguments, StageArguments, parse_recipe

GOOD = {ModelArguments: {"vision": "org/vision", "llm": "org/llm"}, DataArguments: {"data_path": "d.json"},
        StageArguments: {}, ComprehensionConfig: {}}

CASES = [
    (ModelArguments, {"vision": None}, r"set init_from \(a previous stage's output\) or both vision and llm"),
    (ModelArguments, {"image_aspect_ratio": "crop"}, r"image_aspect_ratio='crop'; choose one of pad, native, None"),
    (DataArguments, {"data_path": ","}, r"data_path is empty"),
    (DataArguments, {"max_skip_fraction": -0.1}, r"max_skip_fraction=-0.1 must be in \[0, 1\]"),
    (DataArguments, {"skip_window": 0}, r"skip_window=0 must be >= 1"),
    (DataArguments, {"max_image_pixels": 0}, r"max_image_pixels=0 must be >= 1"),
    (DataArguments, {"max_length": 7}, r"max_length=7 must be >= 8"),
    (DataArguments, {"template": "fancy"}, r"template='fancy'; choose one of plain, chat, None"),
    (StageArguments, {"vision_lr": 0.0}, r"vision_lr=0.0 must be > 0"),
    (StageArguments, {"stage": "1", "lora_r": 8}, r"lora_r=8: stage 1 does not train the LLM"),
    (StageArguments, {"stage": "3"}, r"stage='3'; choose one of 1, 1.5, 2"),
    (ComprehensionConfig, {"mask_ratio": 0.0}, r"mask_ratio=0.0 must be in \(0, 1\]"),
    (ComprehensionConfig, {"head_lr": float("nan")}, r"head_lr=nan must be a finite number >= 0"),
    (ComprehensionConfig, {"matching": "greedy"}, r"matching='greedy'; choose one of hungarian, nearest"),
]


@pytest.mark.parametrize("cls,changes,message", CASES, ids=[f"{c.__name__}:{next(iter(ch))}" for c, ch, _ in CASES])
def test_each_dataclass_refuses_its_own_bad_values(cls, changes, message):
    cls(**GOOD[cls]).validate()
    with pytest.raises(ConfigError, match=message):
        cls(**GOOD[cls] | changes).validate()


def test_lora_on_stages_that_train_the_llm_is_fine():
    for stage in ("1.5", "2"):
        StageArguments(stage=stage, lora_r=8).validate()


def test_the_pool_must_serve_the_masked_tokens_only_once_they_are_known():
    config = ComprehensionConfig(pool_size=4, mask_ratio=0.75)
    config.validate()  # the visual token count comes from the model or its checkpoint
    with pytest.raises(ConfigError, match="pool has 4 rows but 12 of 16 visual tokens"):
        config.validate(16)
    with pytest.raises(ConfigError, match="pool has 4 rows but 12 of 16 visual tokens"):
        config.check_visual_tokens(16)
    dataclasses.replace(config, matching="nearest").check_visual_tokens(16)


def test_recipe_validate_checks_every_part_and_stage_1_5_settings_only_when_used():
    recipe = parse_recipe(None, ["--init_from", "runs/s1", "--data_path", "d.json", "--output_dir", "out",
                                 "--use_cpu", "True", "--mask_ratio", "1.5"])
    recipe.validate(comprehension=False)  # an unused stage-1.5 setting is not an error ...
    with pytest.raises(ConfigError, match=r"mask_ratio=1.5 must be in \(0, 1\]"):
        recipe.validate(comprehension=True)  # ... a used one is
    with pytest.raises(ConfigError, match="attention='sideways'; choose one of"):  # a bad choice always is
        recipe.replace(mask_ratio=0.5, attention="sideways").validate(comprehension=False)
    with pytest.raises(ConfigError, match="llm_lr=-1 must be > 0"):
        recipe.replace(mask_ratio=0.5, llm_lr=-1).validate(comprehension=False)
