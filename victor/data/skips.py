"""Skipped records: what a skip is, how it is logged and counted, and when there are too many.

A record that cannot be trained on (a wrong field type, a missing image, an answer cut off by
`max_length`, ...) never raises out of the data pipeline: it becomes a `Skipped` value that
names its file and position, its record id, the field at fault and a reason from `REASONS`.
`SkipLog` counts skips by reason and logs one warning line per skip, rate-limited (the first
`first` of each reason, then every `every`-th). The training process's tally and the
`max_skip_fraction` guard are in `monitor.py`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

# reason -> what it means. Every skip has one of these reasons.
REASONS: dict[str, str] = {
    "bad_json": "a JSONL line that is not valid JSON or not valid UTF-8",
    "bad_record": "a field of the wrong type or shape (record, id, image, conversations, from, value)",
    "turn_order": "turns that do not alternate human, gpt, human, gpt, ... after any system turns "
                  "(e.g. the conversation starts with gpt, or ends with an unanswered human turn)",
    "no_answer": "no gpt turn to supervise",
    "empty_answer": "a gpt turn whose value is empty or only whitespace",
    "image_marker_mismatch": "the number of <image> markers differs from the number of images",
    "image_marker_misplaced": "an <image> marker in a gpt or system turn",
    "missing_image": "the image file does not exist or is not a file",
    "truncated_image": "the image file ends before its data does",
    "corrupt_image": "not an image PIL can decode (whatever its extension)",
    "image_too_large": "more pixels than the limit (decompression-bomb guard)",
    "image_beyond_max_length": "max_length would cut into an image's tokens",
    "answer_beyond_max_length": "max_length cuts off every supervised token",
    "no_supervised_tokens": "the rendered conversation has no supervised token",
    "template_error": "the chat template refused the conversation",
    "image_processor_error": "the image processor failed on the image",
    "unreadable": "a sample that arrived as None (no reason given)",
    "unexpected_error": "an error nothing above describes (a bug: please report it)",
}
# Events that are counted and logged like skips but keep the sample.
KEPT: dict[str, str] = {
    "truncated_text": "kept, but cut to max_length after its last image (the tail of the text is lost)",
}


@dataclass
class Skipped:
    """A record that was not trained on. `images` is empty so that code looking for image
    samples (`if not sample.images: continue`) passes over a skip like over a text sample."""

    reason: str
    where: str  # "file[index]" (JSON list) or "file:line" (JSONL)
    record_id: str | None
    field: str  # the field at fault: "conversations[2].from", "image", ...
    detail: str
    index: int = -1  # position in the dataset
    images: tuple = ()

    def __str__(self) -> str:
        rid = f" (id {self.record_id!r})" if self.record_id is not None else ""
        return f"{self.where}{rid} [{self.reason}] {self.field}: {self.detail}"


class Padding:
    """A slot with no sample: a stream pads a rank that has one sample fewer than others, so that
    every rank runs the same steps (`victor.data.stream`). The collator drops it uncounted (it is
    not a skip) and reports it in the batch's statistics."""

    images = ()

    def __repr__(self) -> str:
        return "Padding()"


def kind(value) -> str:
    """`list ['human']`, `int 5`: a value's type and a short repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


class SkipLog:
    """Counts events by reason (`counts`, a Counter) and logs each one, rate-limited per reason:
    the first `first` in full, then every `every`-th with the running count (no logger: count only)."""

    def __init__(self, logger: logging.Logger | None, first: int = 5, every: int = 1000):
        self.logger, self.first, self.every = logger, first, every
        self.counts: Counter = Counter()

    def __call__(self, skip: Skipped) -> None:
        self.counts[skip.reason] += 1
        n = self.counts[skip.reason]
        if self.logger is None or (n > self.first and n % self.every):
            return
        verb = "keeping" if skip.reason in KEPT else "skipping"
        note = ""
        if n == self.first:
            note = f" (further '{skip.reason}' events are logged every {self.every}th)"
        elif n > self.first:
            note = f" ({n} '{skip.reason}' events so far)"
        self.logger.warning("%s %s%s", verb, skip, note)
