"""Tiny backbones learn their world as real ones arrive pretrained: the LLM reads scenes from
soft tokens (`SceneReader`, `pretrain_llm`), the encoder learns local region features
(`pretrain_vision`). Both run on the HF Trainer and save back into the backbone directory."""
from __future__ import annotations

import re
import tempfile
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
)

from victor.data.collate import (
    IGNORE,
    TEMPLATES,
    expand_images,
    pad_batch,
    tokenize_with_labels,
)
from victor.data.entries import read_records
from victor.data.llava import parse_record
from victor.data.templates import IMAGE_TOKEN
from victor.tiny.scenes import COLOUR_NAMES, POSITIONS, SHAPES
from victor.tiny.world import WorldPaths, load_scenes


def _told_choice(messages: list[dict]) -> list[list[dict]]:
    """Multiple-choice turns rewritten so the answer is in the text ("the answer is red."):
    a real LLM knows how to pick the letter of a stated option; the tiny one learns it here."""
    out = []
    for user, reply in zip(messages[::2], messages[1::2]):
        options = dict(re.findall(r"^([A-H])\. (.+)$", user["content"], flags=re.M))
        if reply["role"] == "assistant" and reply["content"] in options:
            told = f"the answer is {options[reply['content']]} .\n{user['content']}"
            out.append([{"role": "user", "content": told}, reply])
    return out


class SceneReader(torch.nn.Module):
    """A causal LM that reads each image as 9 scene slots, one per visual token.

    A slot holds the sum of the word embeddings of the object in its grid region ("small" +
    "red" + "circle"; an empty region is a zero vector), at the place where LLaVA puts that
    region's visual token. This is how the tiny LLM learns to read a scene from soft tokens,
    the ability a real LLM brings to LLaVA: stage 1 then only has to map each visual token into
    the LLM's embedding space (the projector's job), and the frozen LLM can already use it.
    """
    def __init__(self, lm, image_token_id: int):
        super().__init__()
        self.lm, self.image_token_id = lm, image_token_id

    def inputs_embeds(self, input_ids, slot_words, slot_valid):
        """Token embeddings with each image token's place holding its scene slot."""
        embed = self.lm.get_input_embeddings()
        slots = (embed(slot_words) * (slot_words > 0).unsqueeze(-1)).sum(-2)  # [batch, slots, hidden]
        is_slot = (input_ids == self.image_token_id).unsqueeze(-1)
        return embed(input_ids).masked_scatter(is_slot, slots[slot_valid])

    def forward(self, input_ids, attention_mask, labels, slot_words, slot_valid):
        return self.lm(inputs_embeds=self.inputs_embeds(input_ids, slot_words, slot_valid),
                       attention_mask=attention_mask, labels=labels)


def scene_slots(scene: dict, tokenizer) -> list[list[int]]:
    """Word ids (size, colour, shape) of the object in each of the 9 grid regions, row-major
    (the order of the visual tokens); an empty region has none."""
    slots: list[list[int]] = [[] for _ in POSITIONS]
    for obj in scene["objects"]:
        slots[obj["region"]] = tokenizer.convert_tokens_to_ids([obj["size"], obj["colour"], obj["shape"]])
    return slots


def scene_examples(tokenizer, world_dir: str | Path, max_length: int = 384) -> list[dict]:
    """The world's training records as token ids, labels and scene slots (see `pretrain_llm`)."""
    grid = len(POSITIONS)
    paths = WorldPaths.at(world_dir)
    scenes = load_scenes(world_dir)
    examples = []
    for path, template in ((paths.stage1, "plain"), (paths.stage15, "chat"), (paths.stage2, "chat")):
        for i, record in enumerate(read_records(path)):
            _, messages, images = parse_record(record, f"{path}[{i}]")
            variants = [messages] + (_told_choice(messages) if template == "chat" else [])
            for msgs in variants:
                if images and IMAGE_TOKEN not in msgs[0]["content"]:  # a told-answer turn cut from later on
                    msgs = [{**msgs[0], "content": IMAGE_TOKEN * len(images) + "\n" + msgs[0]["content"]}, *msgs[1:]]
                rendered = expand_images(TEMPLATES[template](tokenizer, msgs), grid)
                ids, labels = tokenize_with_labels(tokenizer, rendered)
                if len(ids) > max_length or all(label == IGNORE for label in labels):
                    continue
                slots = [s for image in images for s in scene_slots(scenes[image], tokenizer)]
                examples.append({"input_ids": ids, "labels": labels, "slots": slots})
    return examples


def collate_scenes(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids/labels/mask, plus `slot_words` [batch, slots, words] (0 = no word) and
    `slot_valid` [batch, slots] (False for padding slots)."""
    n_slots = max(1, max(len(e["slots"]) for e in batch))
    words = max((len(s) for e in batch for s in e["slots"]), default=1)
    out = pad_batch(batch, pad_id)
    out["slot_words"] = torch.zeros(len(batch), n_slots, words, dtype=torch.long)
    out["slot_valid"] = torch.zeros(len(batch), n_slots, dtype=torch.bool)
    for row, e in enumerate(batch):
        out["slot_valid"][row, :len(e["slots"])] = True
        for k, ids in enumerate(e["slots"]):
            out["slot_words"][row, k, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _train(model, examples, steps: int, batch_size: int, learning_rate: float, seed: int, collate=None) -> float:
    """A short cosine-schedule CPU run on the HF Trainer, no checkpoints; returns the final loss."""
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                                 logging_steps=max(1, steps // 5), save_strategy="no", report_to="none",
                                 use_cpu=True, seed=seed, disable_tqdm=True, remove_unused_columns=False)
        return Trainer(model=model, args=args, train_dataset=examples, data_collator=collate).train().training_loss


def pretrain_llm(llm_dir: str | Path, world_dir: str | Path, steps: int = 300, seed: int = 0,
                 batch_size: int = 32, learning_rate: float = 1e-3) -> float:
    """Give the tiny LLM the language of its world, as a real LLM arrives pretrained.

    Causal LM training (HF Trainer) on the world's training records, each rendered exactly as
    its stage renders it (stage 1 captions with the `plain` template, stage 1.5 and 2 with the
    chat template), with every image read as scene slots (`SceneReader`): the model learns
    to caption and to answer questions from a scene held in soft tokens at the image's place.
    Multiple-choice turns are added once more with the answer told in the text. Saves back
    into `llm_dir`; returns the final training loss. Validation scenes are never seen.

    The learning rate matters: at 3e-3 this 2-layer model never forms the attention that finds
    the asked-about slot and answers from the prior alone (colour/shape at majority level on
    held-out scenes); at 1e-3 it reads the slots within ~300 steps.
    """



    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    reader = SceneReader(AutoModelForCausalLM.from_pretrained(llm_dir), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    examples = scene_examples(tokenizer, world_dir)
    loss = _train(reader, examples, steps, batch_size, learning_rate, seed,
                  collate=partial(collate_scenes, pad_id=tokenizer.pad_token_id))
    reader.lm.save_pretrained(llm_dir)
    return loss


@torch.no_grad()
def slot_reader_accuracy(llm_dir: str | Path, world_dir: str | Path, questions: str | Path,
                         batch_size: int = 32) -> dict[str, float]:
    """Accuracy per category of the tiny LLM reading each image's true scene slots (`SceneReader`)
    on two-choice questions (GQA JSONL with ``choices``, e.g. the world's ``val/fine.jsonl``), read,
    prompted and decided as `victor eval --scoring likelihood` does (the GQA reader, `candidates`,
    `decide`: the choice with the higher mean token log-likelihood). No encoder or projector comes
    between the scene and the LLM, so this is what the LLM itself can answer, a ceiling for the
    LLaVA models built on it."""
    from victor.eval.likelihood import candidates, decide
    from victor.eval.registry import get_benchmark

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    reader = SceneReader(AutoModelForCausalLM.from_pretrained(llm_dir).eval(), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    scenes, grid = load_scenes(world_dir), len(POSITIONS)
    spec = get_benchmark("gqa")
    items = spec.load(questions, WorldPaths.at(world_dir).images)
    examples, owners = [], []
    for item in items:
        for cand, text in candidates(spec, item).items():
            messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{item.prompt}"}, {"role": "assistant", "content": text}]
            ids, labels = tokenize_with_labels(tokenizer, expand_images(TEMPLATES["chat"](tokenizer, messages), grid))
            examples.append({"input_ids": ids, "labels": labels, "slots": scene_slots(scenes[Path(item.image).name], tokenizer)})
            owners.append((item.id, cand))
    scores: dict[str, dict] = {item.id: {} for item in items}
    for start in range(0, len(examples), batch_size):
        batch = collate_scenes(examples[start:start + batch_size], tokenizer.pad_token_id)
        embeds = reader.inputs_embeds(batch["input_ids"], batch["slot_words"], batch["slot_valid"])
        logits = reader.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for (item_id, cand), total, n in zip(owners[start:start + batch_size], (logp * keep).sum(-1), keep.sum(-1)):
            scores[item_id][cand] = [float(total), int(n)]
    right: dict[str, list[bool]] = {}
    for item in items:
        right.setdefault(item.meta.get("category") or "all", []).append(
            decide(item, scores[item.id])["prediction"] == item.answer)
    return {c: sum(v) / len(v) for c, v in right.items()}


class _RegionProbe(torch.nn.Module):
    """Vision tower + linear probes reading attributes (one head per entry of `classes`: its number of
    values) of each 3x3 grid region."""
    def __init__(self, tower, image_size: int, *classes: int):
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
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n + 1) for n in classes)

    def forward(self, pixel_values, labels):  # labels [batch, 9, attributes], 0 = empty region
        tokens = self.tower(pixel_values).last_hidden_state
        tokens = tokens[:, -self.assign.shape[1]:]  # patch tokens (drop a CLS if any)
        regions = torch.einsum("rp,bph->brh", self.assign, tokens)
        loss = sum(torch.nn.functional.cross_entropy(head(regions).flatten(0, 1), labels[..., i].flatten())
                   for i, head in enumerate(self.heads))
        return {"loss": loss}


# what the stand-in encoder is pretrained to tell apart per region: not size, which the fine-detail
# questions ask ("Is the red circle small or large?"), so that what the LLaVA model learns of size
# comes from the pixels through training, not from a feature made for the question (issue 27)
VISION_ATTRIBUTES = {"colour": COLOUR_NAMES, "shape": SHAPES}


def pretrain_vision(vision_dir: str | Path, world_dir: str | Path, steps: int = 200, seed: int = 0,
                    batch_size: int = 64, learning_rate: float = 2e-3) -> float:
    """Give the tiny encoder local features, as a real encoder arrives pretrained.

    Probes on patch tokens pooled per 3x3 grid region learn each region's object colour and
    shape (`VISION_ATTRIBUTES`; not its size) from the world's training scenes (HF Trainer).
    Saves back into `vision_dir`; returns the final training loss. Validation images are never seen.
    """
    tower = AutoModel.from_pretrained(vision_dir)
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    scenes = {k: v for k, v in load_scenes(world_dir).items() if k.startswith("train")}
    vocab = {k: list(v) for k, v in VISION_ATTRIBUTES.items()}
    examples = []
    for name, scene in scenes.items():
        labels = torch.zeros(9, len(vocab), dtype=torch.long)
        for obj in scene["objects"]:
            labels[obj["region"]] = torch.tensor([values.index(obj[k]) + 1 for k, values in vocab.items()])
        with Image.open(Path(world_dir) / "images" / name) as img:
            pixels = processor(img.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        examples.append({"pixel_values": pixels, "labels": labels})
    probe = _RegionProbe(tower, tower.config.image_size, *map(len, vocab.values()))
    loss = _train(probe, examples, steps, batch_size, learning_rate, seed)
    tower.save_pretrained(vision_dir)
    return loss
