"""Skips in the collator (empty batches, truncation, template and processor failures) and the
SkipMonitor that guards a run against training on nothing."""
import copy
import json

import pytest
import torch
from PIL import Image

from victor.data import llava as llava_module
from victor.data.collate import (
    DATA_STATS_KEY,
    LlavaCollator,
    is_empty_batch,
    pop_batch_stats,
)
from victor.data.llava import LlavaDataset, Sample
from victor.data.monitor import SkipMonitor, TooManySkipsError
from victor.data.skips import Skipped

LONG = " ".join(["red green blue yellow"] * 15)


def sample(answer="red", question="<image>\nwhat colour ?", index=0, images=1):
    return Sample(f"s{index}", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                  [Image.new("RGB", (32, 32), (200, 0, 0))] * images, index, f"d.json[{index}]")


class Picky:
    """An image processor that refuses 1x1 images and records the size of each call."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, images, **kwargs):
        self.calls.append(len(images))
        if any(img.size == (1, 1) for img in images):
            raise ValueError("cannot resize a 1x1 image")
        return self.real(images, **kwargs)


def collator(tiny_llava, **kwargs):
    llava, processor = tiny_llava
    return LlavaCollator(processor, llava.config.image_seq_length, "chat", batch_stats=True, **kwargs)


def test_a_batch_of_skips_is_an_empty_batch_with_its_counts(tiny_llava):
    skips = [Skipped("missing_image", "d.json[0]", "a", "image", "x.png: no such file"), None]
    batch = collator(tiny_llava)(skips)
    assert is_empty_batch(batch) and batch["labels"].shape == (0, 0) and "pixel_values" not in batch
    assert pop_batch_stats(batch) == {"samples": 2, "reasons": {"missing_image": 1, "unreadable": 1},
                                     "images": 0}
    assert DATA_STATS_KEY not in batch and pop_batch_stats(batch) is None
    plain = LlavaCollator(tiny_llava[1], 16, "chat")([None])  # without batch_stats: no extra key
    assert set(plain) == {"input_ids", "attention_mask", "labels"}


def test_truncation_is_logged_and_counted(tiny_llava, caplog):
    collate = collator(tiny_llava, max_length=72)
    batch = collate([sample(LONG), sample("red", LONG + " <image>", 1), sample("red", "<image>\n" + LONG, 2),
                     sample(index=3)])
    assert batch["input_ids"].shape == (2, 72)
    assert batch[DATA_STATS_KEY]["reasons"] == {"truncated_text": 1, "image_beyond_max_length": 1,
                                                "answer_beyond_max_length": 1}
    assert collate.skipped == {"truncated_text": 1, "image_beyond_max_length": 1, "answer_beyond_max_length": 1}
    text = caplog.text
    assert "keeping d.json[0] (id 's0') [truncated_text] conversations: 113 tokens, cut to max_length=72" in text
    assert "skipping d.json[1] (id 's1') [image_beyond_max_length] conversations: an image ends at token 107 of 111, beyond max_length=72" in text
    assert "skipping d.json[2] (id 's2') [answer_beyond_max_length] conversations: 111 tokens; every answer" in text


def test_a_template_that_refuses_a_conversation_skips_it(tiny_llava):
    llava, processor = tiny_llava
    processor = copy.deepcopy(processor)
    processor.tokenizer.chat_template = (
        "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden words') }}"
        "{% endif %}{{ m['content'] }} {% endfor %}")
    collate = LlavaCollator(processor, 16, "chat", batch_stats=True)
    batch = collate([sample("forbidden"), sample(index=1)])
    assert batch[DATA_STATS_KEY]["reasons"] == {"template_error": 1} and batch["input_ids"].shape[0] == 1
    assert collate.skipped == {"template_error": 1}
    skip = collate.try_encode(sample("forbidden", index=5))
    assert (skip.reason, skip.field, skip.detail) == ("template_error", "conversations",
                                                      "TemplateError: no forbidden words")


def test_an_image_the_processor_rejects_drops_only_its_sample(tiny_llava, monkeypatch):
    collate = collator(tiny_llava)
    monkeypatch.setattr(collate.processor, "image_processor", Picky(collate.processor.image_processor))
    tiny = sample(index=1)
    tiny.images = [Image.new("RGB", (1, 1))]
    batch = collate([sample(), tiny, sample("blue", "what ?", 2, images=0)])
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    assert batch[DATA_STATS_KEY]["reasons"] == {"image_processor_error": 1}


def test_an_unforeseen_error_is_still_a_skip(tiny_llava, tmp_path, monkeypatch):
    """A bug in parsing (here a StopIteration, what issue 11 found) is a skip, never the end of the epoch."""
    (tmp_path / "d.json").write_text(json.dumps([{"id": "x", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "ho"}]}]))
    dataset = LlavaDataset(str(tmp_path / "d.json"))

    def broken(record, where):
        raise StopIteration

    monkeypatch.setattr(llava_module, "parse_record", broken)
    skip = dataset[0]
    assert isinstance(skip, Skipped) and skip.reason == "unexpected_error" and "StopIteration" in skip.detail
    assert str(skip).startswith(f"{tmp_path / 'd.json'}[0] (id 'x') [unexpected_error] record: StopIteration")
    collate = collator(tiny_llava)
    monkeypatch.setattr(collate, "render", lambda tok, messages: next(iter([])))
    assert is_empty_batch(batch := collate([sample()])) and batch[DATA_STATS_KEY]["reasons"] == {"unexpected_error": 1}
    monkeypatch.setattr(collate, "render", lambda tok, messages: {}["missing"])
    skip = collate.try_encode(sample())
    assert (skip.reason, skip.field, skip.detail) == ("unexpected_error", "conversations", "KeyError: 'missing'")


def test_monitor_stops_above_the_fraction_naming_the_commonest_reason():
    monitor = SkipMonitor(max_skip_fraction=0.1, window=100, min_samples=50)
    for _ in range(20):  # 5% skipped
        monitor.update(10, {"missing_image": 1, "truncated_text": 3})
    assert monitor.skipped() == 20 and monitor.samples == 200
    assert monitor.counts() == {"missing_image": 20, "truncated_text": 60}  # truncated samples are not skips
    with pytest.raises(TooManySkipsError) as info:
        for _ in range(10):
            monitor.update(10, {"bad_record": 10})
    message = str(info.value)
    assert "of the last 100 samples were skipped (max_skip_fraction=0.1)" in message
    assert "the commonest reason is 'bad_record'" in message and "victor data check" in message


def test_monitor_waits_for_min_samples_and_forgets_old_samples():
    monitor = SkipMonitor(max_skip_fraction=0.1, window=100, min_samples=50)
    monitor.update(40, {"missing_image": 40})  # everything skipped, but only 40 samples seen
    with pytest.raises(TooManySkipsError, match="100.0% of the last 50 samples.*'missing_image'"):
        monitor.update(10, {"missing_image": 10})
    monitor = SkipMonitor(max_skip_fraction=0.1, window=100, min_samples=50)
    monitor.update(100, {"corrupt_image": 10})  # exactly 10%: allowed
    monitor.update(100, {})  # the skips leave the window
    assert monitor.recent_fraction() == 0.0 and monitor.counts() == {"corrupt_image": 10}
    with pytest.raises(ValueError, match="max_skip_fraction=1.5"):
        SkipMonitor(max_skip_fraction=1.5)


def test_monitor_observes_batches(tiny_llava):
    collate = collator(tiny_llava)
    monitor = SkipMonitor()
    batch = collate([sample(), None])
    assert monitor.observe(batch) is True and DATA_STATS_KEY not in batch
    assert monitor.observe(collate([None])) is False
    assert (monitor.empty_batches, monitor.samples, monitor.counts()) == (1, 3, {"unreadable": 2})


def test_a_conversation_without_answer_tokens_is_skipped_with_its_reason(tiny_llava):
    collate = collator(tiny_llava)
    empty = Sample("e", [{"role": "user", "content": "<image>\nwhat colour ?"}], [Image.new("RGB", (32, 32))], 4,
                   "d.json[4]")
    skip = collate.try_encode(empty)
    assert isinstance(skip, Skipped)
    assert (skip.reason, skip.where, skip.record_id, skip.field, skip.index) == (
        "no_supervised_tokens", "d.json[4]", "e", "conversations", 4)
    assert skip.detail == "no token of the rendered conversation falls in an answer"
    batch = collate([empty, empty, sample(index=1)])
    assert batch["input_ids"].shape[0] == 1
    assert batch[DATA_STATS_KEY]["reasons"] == {"no_supervised_tokens": 2}  # counted, not just flagged
    gone = collate([Skipped("missing_image", "d.json[0]", "a", "image", "x"),
                    Skipped("missing_image", "d.json[1]", "b", "image", "y"), sample()])
    assert gone[DATA_STATS_KEY]["reasons"] == {"missing_image": 2}


def test_max_length_boundaries(tiny_llava):
    """A conversation of exactly max_length tokens is kept whole; an image ending exactly at
    max_length is whole, one token later it is cut (a skip); long text-only samples are cut."""
    whole = collator(tiny_llava).try_encode(sample("red"))
    n = len(whole["input_ids"])
    exact = collator(tiny_llava, max_length=n).try_encode(sample("red"))
    assert exact["truncation"] is None and exact["input_ids"] == whole["input_ids"]
    assert collator(tiny_llava, max_length=n - 1).try_encode(sample("red"))["truncation"] is not None

    late = Sample("late", [{"role": "user", "content": "what colour ?"}, {"role": "assistant", "content": "red"},
                           {"role": "user", "content": LONG + " <image>"}, {"role": "assistant", "content": "blue"}],
                  [Image.new("RGB", (32, 32))], 0, "d.json[0]")
    ids = collator(tiny_llava).try_encode(late)["input_ids"]
    image_id = tiny_llava[0].config.image_token_id
    last = max(i for i, t in enumerate(ids) if t == image_id)  # index of the image's last token
    assert last + 1 < len(ids)
    kept = collator(tiny_llava, max_length=last + 1).try_encode(late)
    assert kept["truncation"].reason == "truncated_text" and kept["input_ids"] == ids[: last + 1]
    cut = collator(tiny_llava, max_length=last).try_encode(late)
    assert isinstance(cut, Skipped) and cut.reason == "image_beyond_max_length"

    text = collator(tiny_llava, max_length=40).try_encode(sample(LONG, "what colour ?", images=0))
    assert len(text["input_ids"]) == 40 and text["truncation"].reason == "truncated_text"


def test_image_keys_name_the_sample_and_the_image(tiny_llava):
    from victor.data.collate import MAX_IMAGES_PER_SAMPLE

    collate = collator(tiny_llava, image_keys=True)
    two = sample("red", "<image>\n<image>\nwhat colours ?", index=5, images=2)
    batch = collate([sample(index=3), two])
    m = MAX_IMAGES_PER_SAMPLE
    assert batch["image_keys"].tolist() == [3 * m, 5 * m, 5 * m + 1]
    assert batch["image_keys"].dtype == batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long


def test_one_image_processor_call_per_batch_and_per_sample_only_after_a_failure(tiny_llava, monkeypatch):
    collate = collator(tiny_llava)
    real = collate.processor.image_processor
    picky = Picky(real)
    calls = picky.calls
    monkeypatch.setattr(collate.processor, "image_processor", picky)
    good = [sample(index=i) for i in range(3)]
    batch = collate(good)
    assert calls == [3] and torch.equal(batch["pixel_values"], real([s.images[0] for s in good],
                                                                     return_tensors="pt")["pixel_values"])
    calls.clear()
    tiny = sample(index=9)
    tiny.images = [Image.new("RGB", (1, 1))]
    only = collate([tiny])
    assert calls == [1, 1] and is_empty_batch(only) and "pixel_values" not in only
    pixels, kept, dropped = collate.pixel_values([collate.try_encode(tiny)])
    assert pixels is None and kept == [] and len(dropped) == 1
    assert (dropped[0].reason, dropped[0].field, dropped[0].detail) == (
        "image_processor_error", "image", "ValueError: cannot resize a 1x1 image")


def test_collator_defaults_and_template_error(tiny_llava):
    llava, processor = tiny_llava
    from victor.data.collate import render_chat

    default = LlavaCollator(processor, llava.config.image_seq_length)
    assert default.render is render_chat and default.max_length == 2048
    with pytest.raises(ValueError) as err:
        LlavaCollator(processor, 16, "chatml")
    assert str(err.value) == "template='chatml'; choose one of ['chat', 'plain']"
