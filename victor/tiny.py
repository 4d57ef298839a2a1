"""Tiny backbones saved as ordinary Hugging Face directories (the `tiny` recipe, and tests).

`save_backbones` writes a vision encoder (+ image processor) and a causal LM (+ tokenizer)
the way hub repos look, so that the real loading path (`build_model(vision=dir, llm=dir)`)
is what runs on a laptop and in CI.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
)


def vision_config(family: str = "clip", image_size: int = 64, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    if family == "clip":
        return CLIPVisionConfig(**common, projection_dim=hidden)
    if family == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"vision family {family!r}: choose clip or siglip")


def text_config(family: str = "llama", vocab_size: int = 512, hidden: int = 128, layers: int = 2):
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"llm family {family!r}: choose llama or qwen2")


def image_processor(family: str, image_size: int):
    size = {"height": image_size, "width": image_size}
    if family == "clip":
        return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size)
    return SiglipImageProcessor(size=size)


def save_backbones(out_dir: str | Path, tokenizer, *, vision: str = "clip", llm: str = "llama", image_size: int = 64,
                   patch_size: int = 8, vision_hidden: int = 64, vision_layers: int = 2, llm_hidden: int = 128,
                   llm_layers: int = 2, seed: int = 0) -> tuple[str, str]:
    """Random-init tiny backbones saved to `out_dir/vision` and `out_dir/llm`; returns both paths."""
    torch.manual_seed(seed)
    out = Path(out_dir)
    vcfg = vision_config(vision, image_size, patch_size, vision_hidden, vision_layers)
    AutoModel.from_config(vcfg).save_pretrained(out / "vision")
    image_processor(vision, image_size).save_pretrained(out / "vision")
    tcfg = text_config(llm, len(tokenizer), llm_hidden, llm_layers)
    tcfg.bos_token_id, tcfg.eos_token_id, tcfg.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(tcfg).save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    return str(out / "vision"), str(out / "llm")


def _told_choice(messages: list[dict]) -> list[list[dict]]:
    """Multiple-choice turns rewritten so the answer is in the text ("the answer is red."):
    a real LLM knows how to pick the letter of a stated option; the tiny one learns it here."""
    import re

    out = []
    for user, reply in zip(messages[::2], messages[1::2]):
        options = dict(re.findall(r"^([A-H])\. (.+)$", user["content"], flags=re.M))
        if reply["role"] == "assistant" and reply["content"] in options:
            told = f"the answer is {options[reply['content']]} .\n{user['content']}"
            out.append([{"role": "user", "content": told}, reply])
    return out


def pretrain_llm(llm_dir: str | Path, data_files: list[str | Path], steps: int = 300, seed: int = 0,
                 batch_size: int = 32, learning_rate: float = 3e-3) -> float:
    """Give the tiny LLM the language of its world, as a real LLM arrives pretrained.

    Text-only causal LM training (HF Trainer) on the training conversations rendered with the
    chat template, each image replaced by its detailed caption (the first file's caption
    records give them): the model learns to answer questions from a scene written in its
    context, the in-context lookup a real LLM brings and stage 2 relies on. Saves back into
    `llm_dir`; returns the final training loss.
    """
    import tempfile

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from victor.data.llava import parse_record, read_records
    from victor.data.templates import IMAGE_TOKEN

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir)
    parsed = [(path == data_files[0], *parse_record(record, f"{path}[{i}]")[1:])
              for path in data_files for i, record in enumerate(read_records(path))]
    # image -> its detailed caption, from the first file's caption records
    captions = {images[0]: messages[-1]["content"] for first, messages, images in parsed if first and len(images) == 1}
    texts = []
    for first, messages, images in parsed:
        # in the caption records the caption is the answer: nothing to copy from
        scene = "" if first else " ".join(captions.get(image, "") for image in images)
        messages = [{**m, "content": m["content"].replace(IMAGE_TOKEN, scene).strip()} for m in messages]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        texts += [tokenizer.apply_chat_template(m, tokenize=False) for m in _told_choice(messages)]
    examples = [{"input_ids": tokenizer(t, truncation=True, max_length=256)["input_ids"]} for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                                 logging_steps=max(1, steps // 5), save_strategy="no", report_to="none",
                                 use_cpu=True, seed=seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=examples,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        loss = trainer.train().training_loss
    model.save_pretrained(llm_dir)
    return loss


class _RegionProbe(torch.nn.Module):
    """Vision tower + linear probes reading colour/shape/size of each 3x3 grid region."""

    def __init__(self, tower, image_size: int, n_colours: int, n_shapes: int, n_sizes: int):
        super().__init__()
        self.tower = tower
        patch = tower.config.patch_size
        side = image_size // patch
        centres = (torch.arange(side) + 0.5) * patch
        cell = (centres * 3 // image_size).long()  # grid row/col of each patch centre
        region = (cell[:, None] * 3 + cell[None, :]).flatten()  # [patches]
        onehot = torch.nn.functional.one_hot(region, 9).float()  # [patches, regions]
        self.register_buffer("assign", (onehot / onehot.sum(0)).T)  # mean over each region's patches
        hidden = tower.config.hidden_size
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n + 1) for n in (n_colours, n_shapes, n_sizes))

    def forward(self, pixel_values, labels):  # labels [batch, 9, 3], 0 = empty region
        tokens = self.tower(pixel_values).last_hidden_state
        tokens = tokens[:, -self.assign.shape[1]:]  # patch tokens (drop a CLS if any)
        regions = torch.einsum("rp,bph->brh", self.assign, tokens)
        loss = sum(torch.nn.functional.cross_entropy(head(regions).flatten(0, 1), labels[..., i].flatten())
                   for i, head in enumerate(self.heads))
        return {"loss": loss}


def pretrain_vision(vision_dir: str | Path, world_dir: str | Path, steps: int = 200, seed: int = 0,
                    batch_size: int = 64, learning_rate: float = 2e-3) -> float:
    """Give the tiny encoder local features, as a real encoder arrives pretrained.

    Probes on patch tokens pooled per 3x3 grid region learn each region's object colour,
    shape and size from the world's training scenes (HF Trainer). Saves back into
    `vision_dir`; returns the final training loss. Validation images are never seen.
    """
    import tempfile

    from PIL import Image
    from transformers import AutoImageProcessor, Trainer, TrainingArguments

    from victor.data.world import COLOUR_NAMES, SHAPES, SIZES, load_scenes

    tower = AutoModel.from_pretrained(vision_dir)
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    scenes = {k: v for k, v in load_scenes(world_dir).items() if k.startswith("train")}
    vocab = [list(COLOUR_NAMES), list(SHAPES), list(SIZES)]
    examples = []
    for name, scene in scenes.items():
        labels = torch.zeros(9, 3, dtype=torch.long)
        for obj in scene["objects"]:
            labels[obj["region"]] = torch.tensor([v.index(obj[k]) + 1 for v, k in zip(vocab, ("colour", "shape", "size"))])
        with Image.open(Path(world_dir) / "images" / name) as img:
            pixels = processor(img.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        examples.append({"pixel_values": pixels, "labels": labels})
    probe = _RegionProbe(tower, tower.config.image_size, *map(len, vocab))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                                 logging_steps=max(1, steps // 5), save_strategy="no", report_to="none",
                                 use_cpu=True, seed=seed, disable_tqdm=True, remove_unused_columns=False)
        loss = Trainer(model=probe, args=args, train_dataset=examples).train().training_loss
    tower.save_pretrained(vision_dir)
    return loss


def prepare_world(out_dir: str | Path, world=None, *, llm_layers: int = 2, vision_layers: int = 2, seed: int = 0,
                  llm_pretrain_steps: int = 150, vision_pretrain_steps: int = 200, vision_image_size: int = 96,
                  patch_size: int = 32):
    """The tiny recipe's inputs in one call: the world, its tokenizer, and tiny backbones.

    Writes `out_dir/{images,train,val}` (LLaVA JSON + benchmarks), `out_dir/backbones/vision`
    (pretrained on the training scenes' regions) and
    `out_dir/backbones/llm` (with the world's word-level tokenizer, text-pretrained on the
    training conversations). Reuses what exists.

    The encoder sees the image at `vision_image_size` in patches of `patch_size`: by default
    96 / 32, a 3x3 patch grid on the world's 3x3 grid of regions, so each visual token covers
    one region (objects never cross a region border). With 8-pixel patches of a 64-pixel image
    a 2-layer encoder this small cannot tell shapes apart (region probe at majority-class level).
    """
    from victor.data.world import WorldConfig, build_tokenizer, ensure_world, world_texts

    world = world or WorldConfig()
    paths = ensure_world(out_dir, world)
    backbones = Path(out_dir) / "backbones"
    vision_dir, llm_dir = backbones / "vision", backbones / "llm"
    if not (vision_dir / "config.json").exists() or not (llm_dir / "config.json").exists():
        tokenizer = build_tokenizer(world_texts(out_dir))
        save_backbones(backbones, tokenizer, image_size=vision_image_size, patch_size=patch_size,
                       vision_layers=vision_layers,
                       llm_layers=llm_layers, seed=seed)
        if llm_pretrain_steps:
            pretrain_llm(llm_dir, [paths.stage15, paths.stage2], steps=llm_pretrain_steps, seed=seed)
        if vision_pretrain_steps:
            pretrain_vision(vision_dir, out_dir, steps=vision_pretrain_steps, seed=seed)
    return paths, str(vision_dir), str(llm_dir)
