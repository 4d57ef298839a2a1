"""Samples -> padded tensors with labels on the assistant's answers only.

One generic rule serves every chat template: render the conversation with the tokenizer's
own template, find each answer's character span by rendering the prefix before it (with the
generation prompt) and the prefix including it, then label the tokens whose offsets fall in
those spans. `<image>` is expanded to exactly the visual token count before tokenising, the
same text `LlavaProcessor` produces, so positions are known from `input_ids` alone.

Nothing about one sample can fail a batch: a sample that cannot be encoded (the template
refuses it, `max_length` would cut into an image or off every answer, the image processor
fails on its image) is dropped, logged and counted by reason like the dataset's skips; a
sample cut by `max_length` after its last image is kept, logged and counted as
`truncated_text`. A batch left with no sample is an EMPTY BATCH (`is_empty_batch`): the
usual keys with zero rows, which the training step skips. With `batch_stats=True` every
batch also carries `batch[DATA_STATS_KEY] = {"samples": n, "reasons": {reason: count}}`, the
counts of this batch, for `monitor.SkipMonitor`, which removes the key before the model sees it.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from jinja2 import TemplateError as JinjaTemplateError

from victor.data.llava import Sample
from victor.data.skips import Padding, SkipLog, Skipped
from victor.data.templates import IMAGE_TOKEN, Rendered

IGNORE = -100
MAX_IMAGES_PER_SAMPLE = 1024
BLANK_IMAGE_KEY = -1  # the image key of a text-only batch's blank image
DATA_STATS_KEY = "data_stats"
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


def empty_batch() -> dict[str, torch.Tensor]:
    """The batch of a step with no usable sample: `input_ids`, `attention_mask`, `labels` of shape [0, 0]."""
    return {key: torch.zeros((0, 0), dtype=torch.long) for key in ("input_ids", "attention_mask", "labels")}


def is_empty_batch(batch: dict) -> bool:
    """True for a batch with no sample to train on (the collator's `empty_batch()`): skip the step."""
    return batch["input_ids"].shape[0] == 0


def pop_batch_stats(batch: dict) -> dict | None:
    """Remove and return `{"samples": n, "reasons": {reason: count}}` (None without `batch_stats`)."""
    return batch.pop(DATA_STATS_KEY, None)


class LlavaCollator:
    """Callable for a DataLoader/Trainer: samples (or the dataset's `Skipped`) -> a padded batch.

    `skipped` counts, in this process, what `encode` dropped or truncated by reason, plus
    `unreadable`: samples that arrived already skipped by the dataset (counted by their own
    reason in the dataset's `skipped` and in the batch statistics).
    """

    def __init__(self, processor, image_seq_length: int, template: str = "chat", max_length: int = 2048,
                 padding_side: str = "right", image_keys: bool = False, batch_stats: bool = False,
                 blank_image: bool = False):
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r}; choose one of {sorted(TEMPLATES)}")
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.render = TEMPLATES[template]
        self.max_length, self.padding_side = max_length, padding_side
        self.n_visual = image_seq_length  # the model config's count, what LlavaProcessor expands to
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_keys = image_keys  # stage 1.5: name each image (sample index, ordinal) for its mask
        self.batch_stats = batch_stats
        self.blank_image = blank_image  # training: a text-only batch still runs the vision tower (see add_blank_image)
        self._blank_pixels = None
        self.skips = SkipLog(log)
        self.skipped = self.skips.counts

    def try_encode(self, sample: Sample) -> dict | Skipped:
        """Token ids and labels of one sample, or the `Skipped` saying why it cannot be trained on
        (logged and counted). Never raises. A kept sample cut by `max_length` has its
        `truncated_text` event in `result["truncation"]`."""
        try:
            result = self._encode(sample)
        except (TemplateError, JinjaTemplateError) as err:
            result = self.make_skip(sample, "template_error", "conversations", f"{type(err).__name__}: {err}")
        except Exception as err:
            result = self.make_skip(sample, "unexpected_error", "conversations", f"{type(err).__name__}: {err}")
        if isinstance(result, Skipped):
            self.skips(result)
        elif result["truncation"] is not None:
            self.skips(result["truncation"])
        return result

    def make_skip(self, sample: Sample, reason: str, field: str, detail: str) -> Skipped:
        """A Skipped naming the sample's file position and id (not yet counted or logged)."""
        return Skipped(reason, sample.where or "sample", sample.id, field, detail, sample.index)

    def required_length(self, sample: Sample) -> int | None:
        """The fewest tokens `max_length` must allow for `sample` to be trained on (its images whole
        and one answer token), or None if it cannot be encoded at all. Reads no image."""
        try:
            rendered = expand_images(self.render(self.tokenizer, sample.messages), self.n_visual)
        except (TemplateError, JinjaTemplateError):
            return None
        ids, labels = tokenize_with_labels(self.tokenizer, rendered)
        first_answer = next((i for i, lab in enumerate(labels) if lab != IGNORE), None)
        if first_answer is None:
            return None
        last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
        return max(last_image, first_answer) + 1

    def _encode(self, sample: Sample) -> dict | Skipped:
        rendered = expand_images(self.render(self.tokenizer, sample.messages), self.n_visual)
        ids, labels = tokenize_with_labels(self.tokenizer, rendered)
        if all(lab == IGNORE for lab in labels):
            return self.make_skip(sample, "no_supervised_tokens", "conversations",
                                  "no token of the rendered conversation falls in an answer")
        truncation = None
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= self.max_length:
                return self.make_skip(sample, "image_beyond_max_length", "conversations",
                                      f"an image ends at token {last_image + 1} of {len(ids)}, beyond "
                                      f"max_length={self.max_length}")
            truncation = self.make_skip(sample, "truncated_text", "conversations",
                                        f"{len(ids)} tokens, cut to max_length={self.max_length}")
            if all(lab == IGNORE for lab in labels[: self.max_length]):
                return self.make_skip(sample, "answer_beyond_max_length", "conversations",
                                      f"{len(ids)} tokens; every answer token is beyond max_length={self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        keys = [sample.index * MAX_IMAGES_PER_SAMPLE + k for k in range(len(sample.images))]
        return {"input_ids": ids, "labels": labels, "images": sample.images, "keys": keys,
                "truncation": truncation, "sample": sample}

    def __call__(self, samples: list) -> dict[str, torch.Tensor]:
        reasons: Counter = Counter()
        encoded = []
        padding = sum(isinstance(sample, Padding) for sample in samples)  # a stream's filler, not a sample
        samples = [sample for sample in samples if not isinstance(sample, Padding)]
        for sample in samples:
            if not isinstance(sample, Sample):  # the dataset's Skipped (already logged), or None
                self.skipped["unreadable"] += 1
                reasons[sample.reason if isinstance(sample, Skipped) else "unreadable"] += 1
                continue
            result = self.try_encode(sample)
            if isinstance(result, Skipped):
                reasons[result.reason] += 1
                continue
            reasons["truncated_text"] += result["truncation"] is not None
            encoded.append(result)
        pixel_values, encoded, dropped = self.pixel_values(encoded)
        reasons.update(skip.reason for skip in dropped)
        batch = self.pad(encoded, pixel_values) if encoded else empty_batch()
        if self.batch_stats:
            batch[DATA_STATS_KEY] = {"samples": len(samples), "reasons": {k: v for k, v in reasons.items() if v},
                                     "images": sum(len(e["images"]) for e in encoded)}
            if padding:
                batch[DATA_STATS_KEY]["padding"] = padding
        return batch

    def pixel_values(self, encoded: list[dict]) -> tuple[torch.Tensor | None, list[dict], list[Skipped]]:
        """All images of the batch through the image processor; if that fails, sample by sample:
        -> (pixel values, the samples kept, the skips of those whose images it cannot process)."""
        images = [img for e in encoded for img in e["images"]]
        if not images:
            return None, encoded, []
        try:
            return self.processor.image_processor(images, return_tensors="pt")["pixel_values"], encoded, []
        except Exception:
            pass
        kept, pixels, dropped = [], [], []
        for e in encoded:
            if e["images"]:
                try:
                    pixels.append(self.processor.image_processor(e["images"], return_tensors="pt")["pixel_values"])
                except Exception as err:
                    dropped.append(self.make_skip(e["sample"], "image_processor_error", "image",
                                                  f"{type(err).__name__}: {err}"))
                    self.skips(dropped[-1])
                    continue
            kept.append(e)
        return (torch.cat(pixels) if pixels else None), kept, dropped

    def pad(self, encoded: list[dict], pixel_values: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = pad_batch(encoded, self.tokenizer.pad_token_id, self.padding_side)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
            if self.image_keys:
                batch["image_keys"] = torch.tensor([k for e in encoded for k in e["keys"]], dtype=torch.long)
        elif self.blank_image:
            self.add_blank_image(batch)
        return batch

    def add_blank_image(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Give a text-only batch one blank image (zero pixels, as LLaVA does) whose visual tokens sit
        in padding after the first row's text: attention 0, no label. The vision tower and projector
        (and stage 1.5's matching and head) then run on every batch, so sharded engines (ZeRO-3,
        FSDP) gather the same parameters on every rank, while no real token attends to the blank
        tokens and no loss term counts them. In place; returns `batch`."""
        rows = batch["input_ids"].shape[0]
        tail = {"input_ids": torch.full((rows, self.n_visual), self.tokenizer.pad_token_id, dtype=torch.long),
                "attention_mask": torch.zeros((rows, self.n_visual), dtype=torch.long),
                "labels": torch.full((rows, self.n_visual), IGNORE, dtype=torch.long)}
        tail["input_ids"][0] = self.image_token_id
        for key, extra in tail.items():
            batch[key] = torch.cat([batch[key], extra.to(batch[key].dtype)], dim=1)
        batch["pixel_values"] = self.blank_pixels()
        if self.image_keys:
            batch["image_keys"] = torch.tensor([BLANK_IMAGE_KEY], dtype=torch.long)
        return batch

    def blank_pixels(self) -> torch.Tensor:
        """Zero pixel values of one image, in the shape the image processor produces."""
        if self._blank_pixels is None:
            from PIL import Image

            probe = self.processor.image_processor([Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
            self._blank_pixels = torch.zeros_like(probe)
        return self._blank_pixels.clone()
