"""A victor checkpoint in stock tools: transformers classes, pipeline, and the files lmms-eval/vLLM read."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

from victor.eval.run import run_benchmark
from victor.infer import Generator


@pytest.fixture(scope="module")
def checkpoint(tiny_llava, tmp_path_factory):
    model, processor = tiny_llava
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_checkpoint_files_for_other_tools(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja",
            "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["image_seq_length"] == 16 and config["vision_feature_select_strategy"] == "default"
    processor = json.loads((checkpoint / "processor_config.json").read_text())
    assert processor["patch_size"] == 8 and processor["num_additional_image_tokens"] == 1


def test_pipeline_and_stock_generate_match_victor_chat(checkpoint):
    images = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 0, 250))]
    prompts = ["what colour is the circle ?", "how many objects ?"]
    ours = Generator(str(checkpoint))(images, prompts, max_new_tokens=6)

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    stock = []
    for image, prompt in zip(images, prompts):
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": prompt}]}], add_generation_prompt=True)
        inputs = processor(text=text, images=image, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        stock.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert ours == stock

    pipe = pipeline("image-text-to-text", model=str(checkpoint))
    for image, prompt, expected in zip(images, prompts, ours):
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        result = pipe(text=messages, max_new_tokens=6, do_sample=False, return_full_text=False)
        assert result[0]["generated_text"].strip() == expected


def test_eval_runner_end_to_end_on_world_files(checkpoint, tmp_path):
    from victor.tiny.scenes import WorldConfig
    from victor.tiny.world import generate_world

    world = generate_world(tmp_path / "w", WorldConfig(n_train=4, n_val=6, image_size=32))
    gen = Generator(str(checkpoint))
    fn = lambda images, prompts: gen(images, prompts, max_new_tokens=3)  # noqa: E731
    mmb = run_benchmark("mmbench", world.mmbench, None, fn, tmp_path / "mmb", batch_size=8, progress=False)
    assert mmb["n"] == sum(1 for _ in open(world.mmbench)) - 1
    assert 0.0 <= mmb["metrics"]["accuracy"] <= 1.0 and "circular_accuracy" in mmb["metrics"]
    pope = run_benchmark("pope", world.pope["random"].parent, world.images, fn, tmp_path / "pope", batch_size=16,
                         progress=False)
    assert set(pope["tables"]["category"]) == {"random", "popular", "adversarial"}
    lines = (tmp_path / "pope" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == pope["n"]


def test_cli_chat_prints_the_same_answer(checkpoint, tmp_path, capsys):
    from victor.cli import main

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (250, 0, 0)).save(image)
    expected = Generator(str(checkpoint))([Image.open(image).convert("RGB")], ["what colour is the circle ?"],
                                          max_new_tokens=6)[0]
    main(["chat", "--model", str(checkpoint), "--image", str(image), "--max-new-tokens", "6",
          "what colour is the circle ?"])
    out = capsys.readouterr().out
    assert f"Q: what colour is the circle ?\nA: {expected}" in out
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(checkpoint), "--bogus", "x", "q"])
