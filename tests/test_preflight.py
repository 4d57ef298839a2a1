"""Configuration errors are caught before any weight is loaded, each naming the option."""
import json

import pytest
from PIL import Image

from victor.cli import main


@pytest.fixture(scope="module")
def setup(tiny_llava, tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    model, processor = tiny_llava
    model.save_pretrained(root / "s1")
    processor.save_pretrained(root / "s1")
    (root / "s1" / "victor_stage.json").write_text("{}")  # a finished stage's output
    (root / "img").mkdir()
    Image.new("RGB", (32, 32)).save(root / "img" / "0.png")
    (root / "d.json").write_text(json.dumps([{"id": "0", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\ndescribe ."}, {"from": "gpt", "value": "a picture ."}]}]))
    return root


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    """Loading a model during these tests is itself a failure: the errors must come first."""
    import victor.train.run

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the configuration was checked")

    monkeypatch.setattr(victor.train.run, "make_model", refuse)


def base(root, **changes):
    options = {"stage": "1.5", "init_from": str(root / "s1"), "data_path": str(root / "d.json"),
               "image_root": str(root / "img"), "output_dir": str(root / "out"), "use_cpu": "True",
               "pool_size": "64", "max_length": "256"} | changes
    return [x for k, v in options.items() for x in (f"--{k}", v)]


CASES = [
    ({"mask_ratio": "1.5"}, r"mask_ratio=1.5 must be in \(0, 1\]"),
    ({"pool_size": "4"}, r"pool has 4 rows but 12 of 16 visual tokens per image are masked"),
    ({"pool_size": "0", "matching": "nearest"}, r"pool_size=0 must be >= 1"),
    ({"recon_weight": "-1"}, r"recon_weight=-1.0 must be a finite number >= 0"),
    ({"data_path": "/nonexistent/d.json"}, r"data_path: no such file /nonexistent/d.json"),
    ({"data_path": ""}, r"data_path is empty"),
    ({"image_root": "/nonexistent/img"}, r"image_root=/nonexistent/img: no such directory"),
    ({"init_from": "/nonexistent/stage1"}, r"init_from=/nonexistent/stage1: no such directory, and not a hub id"),
    ({"init_from": "runs/tiny/stage1/x"}, r"init_from=runs/tiny/stage1/x: no such directory, and not a hub id"),
    ({"max_length": "16"}, r"max_length=16 cannot hold one image \(16 visual tokens\)"),
    ({"llm_lr": "0"}, r"llm_lr=0.0 must be > 0"),
    ({"init_from": ""}, r"set init_from \(a previous stage's output\) or both vision and llm"),
    ({"max_length": "4"}, r"max_length=4 must be >= 8"),
    ({"max_skip_fraction": "2"}, r"max_skip_fraction=2.0 must be in \[0, 1\]"),
    ({"skip_window": "0"}, r"skip_window=0 must be >= 1"),
    ({"stage": "1", "lora_r": "4"}, r"lora_r=4: stage 1 does not train the LLM"),
    ({"resume_from_checkpoint": "auto"}, r"no complete checkpoint-N in .*use --resume_from_checkpoint auto-or-new"),
]


@pytest.mark.parametrize("changes,message", CASES, ids=[next(iter(c)) + "=" + next(iter(c.values())) for c, _ in CASES])
def test_configuration_errors_name_the_option(setup, changes, message):
    with pytest.raises(SystemExit, match=message) as err:
        main(["train", *base(setup, **changes)])
    assert str(err.value.code).startswith("victor train: ")


def test_resume_from_a_finished_stage_says_what_it_is(setup):
    with pytest.raises(SystemExit, match="finished stage's output: use it as init_from"):
        main(["train", *base(setup, resume_from_checkpoint=str(setup / "s1"))])


def test_init_from_a_directory_that_is_no_checkpoint(setup):
    with pytest.raises(SystemExit, match="no config.json there"):
        main(["train", *base(setup, init_from=str(setup / "img"))])


def test_bad_choices_are_refused_by_the_parser_and_by_typed_calls(setup):
    from victor.config import ConfigError, parse_recipe
    from victor.train.run import train_stage

    with pytest.raises(SystemExit):
        parse_recipe(None, base(setup, attention="sideways"))
    recipe = parse_recipe(None, base(setup)).replace(attention="sideways")
    with pytest.raises(ConfigError, match="attention='sideways'; choose one of causal, bidirectional-visual, prefix"):
        train_stage(recipe)
