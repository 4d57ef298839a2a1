"""Samples -> padded tensors with labels on the assistant's answers only.

One generic rule serves every chat template: render the conversation with the tokenizer's
own template, find each answer's character span by rendering the prefix before it (with the
generation prompt) and the prefix including it, then label the tokens whose offsets fall in
those spans. `<image>` is expanded to exactly the visual token count before tokenising, the
same text `LlavaProcessor` produces, so positions are known from `input_ids` alone.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from victor.data.llava import Sample
from victor.data.templates import IMAGE_TOKEN, Rendered

IGNORE = -100
MAX_IMAGES_PER_SAMPLE = 1024
log = logging.getLogger(__name__)


class TemplateError(ValueError):
    pass


def render_chat(tokenizer, messages: list[dict]) -> Rendered:
    """Full text and the character spans of each assistant message (with its end-of-turn text)."""

    def render(msgs, prompt):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    text = render(messages, False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, upto = render(messages[:k], True), render(messages[: k + 1], False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise TemplateError(
                "the chat template does not render conversations prefix-consistently, so answer spans "
                "cannot be located; use a template whose rendering of a prefix is a prefix of the whole"
            )
        spans.append((len(before), len(upto)))
    return Rendered(text, spans)


def render_plain(tokenizer, messages: list[dict]) -> Rendered:
    """LLaVA `plain` (stage 1): the image, then the caption; only the caption is supervised."""
    images = "".join(m["content"].count(IMAGE_TOKEN) * IMAGE_TOKEN for m in messages if m["role"] == "user")
    answer = next(m["content"] for m in messages if m["role"] == "assistant") + tokenizer.eos_token
    return Rendered(images + answer, [(len(images), len(images) + len(answer))])


TEMPLATES = {"chat": render_chat, "plain": render_plain}


def expand_images(rendered: Rendered, n_visual: int) -> Rendered:
    """Repeat every `<image>` n_visual times, shifting the spans that follow."""
    pieces = rendered.text.split(IMAGE_TOKEN)
    starts = np.cumsum([0] + [len(p) + len(IMAGE_TOKEN) for p in pieces[:-1]])  # tag positions + len
    grow = (n_visual - 1) * len(IMAGE_TOKEN)
    shift = lambda pos: pos + grow * int((starts[1:] <= pos).sum())  # noqa: E731
    text = (IMAGE_TOKEN * n_visual).join(pieces)
    return Rendered(text, [(shift(a), shift(b)) for a, b in rendered.spans])


def tokenize_with_labels(tokenizer, rendered: Rendered) -> tuple[list[int], list[int]]:
    enc = tokenizer(rendered.text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], np.asarray(enc["offset_mapping"]).reshape(-1, 2)
    supervised = np.zeros(len(ids), dtype=bool)
    for a, b in rendered.spans:
        supervised |= (offsets[:, 0] >= a) & (offsets[:, 1] <= b) & (offsets[:, 1] > offsets[:, 0])
    labels = np.where(supervised, np.asarray(ids), IGNORE)
    return list(ids), labels.tolist()


def pad_batch(encoded: list[dict], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """`input_ids`/`labels` lists -> padded `input_ids`, `attention_mask`, `labels` tensors."""
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(e["input_ids"])
        labels[row, cols] = torch.tensor(e["labels"])
        attention[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class LlavaCollator:
    """Callable for a DataLoader/Trainer. Broken samples are dropped and counted in `skipped`."""

    def __init__(self, processor, image_seq_length: int, template: str = "chat", max_length: int = 2048,
                 padding_side: str = "right", image_keys: bool = False):
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r}; choose one of {sorted(TEMPLATES)}")
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.render = TEMPLATES[template]
        self.max_length, self.padding_side = max_length, padding_side
        self.n_visual = image_seq_length  # the model config's count, what LlavaProcessor expands to
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_keys = image_keys  # stage 1.5: name each image (sample index, ordinal) for its mask
        self.skipped: Counter = Counter()

    def encode(self, sample: Sample) -> dict | None:
        rendered = expand_images(self.render(self.tokenizer, sample.messages), self.n_visual)
        ids, labels = tokenize_with_labels(self.tokenizer, rendered)
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= self.max_length:
                self.skipped["image_beyond_max_length"] += 1
                return None
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(lab == IGNORE for lab in labels):
            self.skipped["no_supervised_tokens"] += 1
            return None
        keys = [sample.index * MAX_IMAGES_PER_SAMPLE + k for k in range(len(sample.images))]
        return {"input_ids": ids, "labels": labels, "images": sample.images, "keys": keys}

    def __call__(self, samples: list[Sample | None]) -> dict[str, torch.Tensor]:
        self.skipped["unreadable"] += sum(s is None for s in samples)
        encoded = [e for e in (self.encode(s) for s in samples if s is not None) if e is not None]
        if not encoded:
            raise RuntimeError("every sample of this batch was unusable; see the warnings above")
        return self.pad(encoded)

    def pad(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch(encoded, self.tokenizer.pad_token_id, self.padding_side)
        images = [img for e in encoded for img in e["images"]]
        if images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            if self.image_keys:
                batch["image_keys"] = torch.tensor([k for e in encoded for k in e["keys"]], dtype=torch.long)
        return batch
