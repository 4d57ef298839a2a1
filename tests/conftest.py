import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from helpers import COLOURS, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def backbones(tmp_path_factory):
    """Saved tiny CLIP + Llama directories: the real from_pretrained path, no network."""
    from victor.tiny.backbones import save_backbones

    out = tmp_path_factory.mktemp("backbones")
    return save_backbones(out, make_tokenizer(), image_size=32, patch_size=8, vision_hidden=32,
                          llm_hidden=64, vision_layers=1, llm_layers=2)


@pytest.fixture(scope="session")
def tiny_llava(backbones):
    from victor.model.assemble import build_model

    return build_model(*backbones)


@pytest.fixture(scope="session")
def pool_checkpoint(tiny_llava, tmp_path_factory):
    """The tiny checkpoint with a 64-row pool beside it, as a stage-1.5 output has (serve and web tests)."""
    from victor.model.comprehension_state import save_state

    model, processor = tiny_llava
    path = tmp_path_factory.mktemp("pool-checkpoint") / "ckpt"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    hidden = model.config.text_config.hidden_size
    save_state({"pool": torch.randn(64, hidden, generator=torch.Generator().manual_seed(0)),
                "pool_ready": torch.tensor(True), "usage": torch.zeros(64, dtype=torch.long)}, path)
    return path


@pytest.fixture(scope="session")
def colour_corpus(tmp_path_factory):
    """The tiny training corpus the training, engine and guard tests share: 48 one-colour 32 px images
    (img/), their captions (captions.json, stage 1) and a one-turn chat about each (chat.json)."""
    import json

    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    (root / "img").mkdir()
    captions, chat = [], []
    for i in range(48):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / "img" / f"{i}.png")
        captions.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {colour} image ."}]})
        chat.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail ."},
            {"from": "gpt", "value": f"the background is {colour} . there are no objects ."}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "chat.json").write_text(json.dumps(chat))
    return root
