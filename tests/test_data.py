"""LLaVA records -> tokens and labels, checked token by token on known strings."""
import json

import pytest
import torch
from PIL import Image

from victor.data.collate import (
    IGNORE,
    LlavaCollator,
    TemplateError,
    expand_images,
    render_chat,
)
from victor.data.entries import DataFormatError, read_records
from victor.data.llava import LlavaDataset, Sample, parse_record
from victor.data.templates import Rendered


def supervised_tokens(processor, batch, row=0):
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    return processor.tokenizer.convert_ids_to_tokens(ids[labels != IGNORE].tolist())


def test_chat_labels_cover_exactly_the_answers(tiny_llava):
    llava, processor = tiny_llava
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    sample = Sample("s", [
        {"role": "user", "content": "what colour is the circle ?\n<image>"},  # <image> last in the turn
        {"role": "assistant", "content": "red ."},
        {"role": "user", "content": "how many objects ?"},
        {"role": "assistant", "content": "two"},
    ], [red])
    batch = LlavaCollator(processor, llava.config.image_seq_length, "chat")([sample])
    assert supervised_tokens(processor, batch) == ["red", ".", "</s>", "two", "</s>"]
    ids = batch["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 16
    # the 16 image tokens are contiguous and no image token is supervised
    pos = (ids == processor.image_token_id).nonzero().flatten()
    assert (pos.diff() == 1).all() and (batch["labels"][0][pos] == IGNORE).all()
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_collator_prompt_matches_processor(tiny_llava):
    """The training text is exactly what the stock processor builds for inference."""
    llava, processor = tiny_llava
    img = Image.new("RGB", (32, 32), (0, 0, 255))
    messages = [{"role": "user", "content": "<image>\nwhat colour ?"}, {"role": "assistant", "content": "blue"}]
    batch = LlavaCollator(processor, llava.config.image_seq_length, "chat")([Sample("s", messages, [img])])
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour ?"}]}],
        add_generation_prompt=True)
    ref = processor(text=prompt, images=img, return_tensors="pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][0][: len(ref)], ref)
    first_label = int((batch["labels"][0] != IGNORE).nonzero()[0])
    assert first_label == len(ref)  # supervision starts right after "ASSISTANT:"


def test_plain_template_and_text_only_and_padding(tiny_llava):
    llava, processor = tiny_llava
    img = Image.new("RGB", (32, 32))
    caption = Sample("c", [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a red circle ."}], [img])
    plain = LlavaCollator(processor, llava.config.image_seq_length, "plain")([caption])
    assert supervised_tokens(processor, plain) == ["a", "red", "circle", ".", "</s>"]
    assert plain["input_ids"].shape[1] == 16 + 5 + (1 if processor.tokenizer("a")["input_ids"][0] == processor.tokenizer.bos_token_id else 0)

    text_only = Sample("t", [{"role": "user", "content": "name a shape ."}, {"role": "assistant", "content": "circle"}], [])
    batch = LlavaCollator(processor, llava.config.image_seq_length, "chat")([caption, text_only])
    assert batch["pixel_values"].shape[0] == 1  # only the image sample contributes pixels
    assert supervised_tokens(processor, batch, 1) == ["circle", "</s>"]
    n1 = int(batch["attention_mask"][1].sum())
    assert (batch["input_ids"][1, n1:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][1, n1:] == IGNORE).all()
    left = LlavaCollator(processor, llava.config.image_seq_length, "chat", padding_side="left")([caption, text_only])
    assert left["attention_mask"][1, 0] == 0 and left["attention_mask"][1, -1] == 1


def test_generic_template_chatml(tiny_llava):
    """A ChatML-style template (Qwen) works through the same span rule, no per-template code."""
    import copy

    llava, processor = tiny_llava
    processor = copy.deepcopy(processor)
    tok = processor.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    s = Sample("q", [{"role": "user", "content": "<image>what shape ?"}, {"role": "assistant", "content": "a square"}],
               [Image.new("RGB", (32, 32))])
    batch = LlavaCollator(processor, llava.config.image_seq_length, "chat")([s])
    assert supervised_tokens(processor, batch) == ["a", "square", "<|im_end|>"]


def test_non_prefix_consistent_template_is_a_clear_error(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}!"
    with pytest.raises(TemplateError) as err:
        render_chat(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert str(err.value) == ("the chat template does not render conversations prefix-consistently, so answer "
                              "spans cannot be located; use a template whose rendering of a prefix is a prefix "
                              "of the whole")


def test_expand_images_shifts_spans():
    r = expand_images(Rendered("x<image>y<image>zz", [(0, 1), (8, 9), (16, 18)]), 3)
    assert r.text == "x" + "<image>" * 3 + "y" + "<image>" * 3 + "zz"
    assert [r.text[a:b] for a, b in r.spans] == ["x", "y", "zz"]


def test_record_errors_name_the_field(tmp_path):
    with pytest.raises(DataFormatError, match="conversations\\[1\\]"):
        parse_record({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]}, "f.json[3]")
    with pytest.raises(DataFormatError, match="2 '<image>' tags but 1 images"):
        parse_record({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                          {"from": "gpt", "value": "x"}]}, "r")
    bad = tmp_path / "pope.jsonl"
    bad.write_text('{"question_id": 1, "text": "is there a cat?", "label": "yes"}\n')
    with pytest.raises(DataFormatError, match="no record has a 'conversations' field"):
        read_records(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1}\n{"x": ')
    with pytest.raises(DataFormatError, match="broken.json:1"):
        read_records(broken)
    # an image record without a tag gets the image before the first human turn (LLaVA convention)
    _, messages, _ = parse_record({"image": "a.png", "conversations": [
        {"from": "human", "value": "what ?"}, {"from": "gpt", "value": "x"}]}, "r")
    assert messages[0]["content"] == "<image>\nwhat ?"


def test_bad_samples_are_skipped_and_counted(tiny_llava, tmp_path):
    llava, processor = tiny_llava
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    records = [
        {"id": "ok", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red"}]},
        {"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red"}]},
        {"id": "corrupt", "image": "corrupt.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red"}]},
        {"id": "noanswer", "conversations": [{"from": "human", "value": "hi"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    ds = LlavaDataset(str(tmp_path / "d.json"), tmp_path)
    collator = LlavaCollator(processor, llava.config.image_seq_length, "plain")
    batch = collator([ds[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 1
    assert sum(ds.skipped.values()) == 3 and collator.skipped["unreadable"] == 3


def test_try_encode_returns_the_encoding_or_the_skip(tiny_llava):
    from victor.data.skips import Skipped

    llava, processor = tiny_llava
    collator = LlavaCollator(processor, llava.config.image_seq_length, "chat")
    good = Sample("g", [{"role": "user", "content": "what colour ?"}, {"role": "assistant", "content": "red"}], [])
    cut = Sample("c", [{"role": "user", "content": "<image>\nwhat colour ?"}, {"role": "assistant", "content": "red"}],
                 [Image.new("RGB", (32, 32))])
    encoded = collator.try_encode(good)
    assert encoded["input_ids"] == collator([good])["input_ids"][0].tolist()
    assert [t for t, lab in zip(encoded["input_ids"], encoded["labels"]) if lab != -100][:1] == \
        processor.tokenizer.convert_tokens_to_ids(["red"])
    short = LlavaCollator(processor, llava.config.image_seq_length, "chat", max_length=5)  # cuts into the image
    skip = short.try_encode(cut)
    assert isinstance(skip, Skipped) and skip.reason == "image_beyond_max_length"
    assert short.skipped["image_beyond_max_length"] == 1
    assert collator.try_encode(cut)["images"] == cut.images


def test_plain_template_puts_every_image_first_then_the_caption(tokenizer):
    from victor.data.collate import render_plain

    messages = [{"role": "user", "content": "<image>\nfirst"}, {"role": "assistant", "content": "a red circle"},
                {"role": "user", "content": "and <image>"}, {"role": "assistant", "content": "ignored"}]
    rendered = render_plain(tokenizer, messages)
    assert rendered.text == "<image><image>a red circle</s>"
    assert rendered.spans == [(len("<image><image>"), len(rendered.text))]


def test_skips_name_the_sample_and_an_empty_batch_has_the_usual_keys(tiny_llava):
    from victor.data.collate import empty_batch, is_empty_batch

    llava, processor = tiny_llava
    collator = LlavaCollator(processor, llava.config.image_seq_length, "chat")
    bare = Sample("s1", [{"role": "user", "content": "hi"}], [], index=7)
    skip = collator.make_skip(bare, "no_supervised_tokens", "conversations", "detail")
    assert (skip.where, skip.record_id, skip.field, skip.detail, skip.index) == ("sample", "s1", "conversations", "detail", 7)
    placed = Sample("s2", bare.messages, [], index=3, where="d.json[3]")
    assert collator.make_skip(placed, "r", "f", "d").where == "d.json[3]"
    batch = empty_batch()
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and is_empty_batch(batch)
    assert all(t.dtype == torch.long and t.shape == (0, 0) for t in batch.values())


def test_pad_batch_pads_on_the_right_by_default():
    from victor.data.collate import pad_batch

    encoded = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = pad_batch(encoded, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch(encoded, 0, "left")["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
