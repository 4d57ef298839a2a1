"""A generated corpus of broken records and files (issue 11), with the reason each one must get.

`write_corpus(root)` writes `corpus.json` (a JSON list) and `corpus.jsonl`, and the images they
use: every special record (broken, or odd but usable) is followed by `good_between` good ones,
so that with batch size 4 and the data in file order no batch is entirely unusable. The
collator's kinds assume the chat template and `MAX_LENGTH` tokens.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_LENGTH = 72
LONG = " ".join(["red green blue yellow"] * 15)  # 60 words


def turn(who, value):
    return {"from": who, "value": value}


def qa(question="<image>\ndescribe the image .", answer="a red image ."):
    return [turn("human", question), turn("gpt", answer)]


def png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def image_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def image_files() -> dict[str, bytes | None]:
    """name -> content (None: a directory)."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    png = image_bytes(noise, "PNG")
    palette = Image.new("P", (32, 32), 3)
    palette.putpalette([200, 30, 30] * 256)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {f"good{i}.png": image_bytes(Image.new("RGB", (32, 32), c), "PNG")
             for i, c in enumerate([(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20)])}
    files.update({
        "truncated.png": png[: len(png) // 2], "random.png": bytes(range(256)) * 4, "text.jpg": b"just some text",
        "directory.png": None, "huge.png": png_header(8000, 6000), "bomb.png": png_header(100_000, 100_000),
        "rgba.png": image_bytes(Image.new("RGBA", (32, 32), (255, 0, 0, 100)), "PNG"),
        "palette.png": image_bytes(palette, "PNG", transparency=3),
        "cmyk.jpg": image_bytes(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"),
        "sixteen.png": image_bytes(Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)), "PNG"),
        "la.png": image_bytes(Image.new("LA", (32, 32), (90, 128)), "PNG"),
        "png_named.jpg": png, "grey.jpg": image_bytes(Image.new("L", (32, 32), 77), "JPEG"),
        "rotated.png": image_bytes(Image.new("RGB", (32, 16), (1, 2, 3)), "PNG", exif=exif),
    })
    return files


def image_record(path, conversations=None):
    return {"image": path, "conversations": conversations or qa()}


# (kind, record, reason or None if the record trains)
JSON_KINDS = [
    ("not_an_object", "just a string", "bad_record"),
    ("id_is_a_list", {"id": [1], "conversations": qa("hi")}, "bad_record"),
    ("no_conversations", {"image": "good0.png"}, "bad_record"),
    ("conversations_is_a_string", {"conversations": "human: hi"}, "bad_record"),
    ("turn_is_not_an_object", {"conversations": ["hi", "there"]}, "bad_record"),
    ("from_is_a_list", {"conversations": [{"from": ["human"], "value": "hi"}, turn("gpt", "x")]}, "bad_record"),
    ("value_is_a_number", {"conversations": [turn("human", "hi"), turn("gpt", 5)]}, "bad_record"),
    ("image_is_a_number", {"image": 5, "conversations": qa()}, "bad_record"),
    ("image_is_empty", {"image": "", "conversations": qa()}, "bad_record"),
    ("gpt_only_with_image", {"image": "good0.png", "conversations": [turn("gpt", "a red image .")]}, "turn_order"),
    ("starts_with_gpt", {"conversations": [turn("gpt", "hello"), *qa("hi")]}, "turn_order"),
    ("unanswered_last_turn", {"conversations": [*qa("hi"), turn("human", "and ?")]}, "turn_order"),
    ("human_only", {"conversations": [turn("human", "hi")]}, "no_answer"),
    ("empty_answer", {"conversations": qa("hi", "  ")}, "empty_answer"),
    ("two_markers_one_image", image_record("good1.png", qa("<image>\n<image>\nwhat ?")), "image_marker_mismatch"),
    ("marker_without_image", {"conversations": qa()}, "image_marker_mismatch"),
    ("marker_in_answer", image_record("good1.png", qa("what ?", "<image>")), "image_marker_misplaced"),
    ("missing_image", image_record("nope.png"), "missing_image"),
    ("truncated_image", image_record("truncated.png"), "truncated_image"),
    ("random_bytes_image", image_record("random.png"), "corrupt_image"),
    ("text_named_jpg", image_record("text.jpg"), "corrupt_image"),
    ("image_is_a_directory", image_record("directory.png"), "missing_image"),
    ("over_the_pixel_limit", image_record("huge.png"), "image_too_large"),
    ("decompression_bomb", image_record("bomb.png"), "image_too_large"),
    ("text_before_image_too_long", image_record("good2.png", qa(LONG + " <image>")), "image_beyond_max_length"),
    ("question_too_long", image_record("good2.png", qa("<image>\n" + LONG)), "answer_beyond_max_length"),
    ("answer_too_long", image_record("good2.png", qa("<image>", LONG)), "truncated_text"),
    ("rgba", image_record("rgba.png"), None),
    ("palette_with_transparency", image_record("palette.png"), None),
    ("cmyk_jpeg", image_record("cmyk.jpg"), None),
    ("sixteen_bit_grey", image_record("sixteen.png"), None),
    ("grey_with_alpha", image_record("la.png"), None),
    ("png_named_jpg", image_record("png_named.jpg"), None),
    ("grey_jpeg", image_record("grey.jpg"), None),
    ("exif_rotated", image_record("rotated.png"), None),
]
JSONL_KINDS = [
    ("line_is_not_json", b'{"id": "half", "conversations": [', "bad_json"),
    ("line_is_not_utf8", b'{"id": "caf\xe9", "conversations": []}', "bad_json"),
    ("line_is_a_list", b"[1, 2]", "bad_record"),
]
KINDS = len(JSON_KINDS) + len(JSONL_KINDS)


def good(i: int) -> dict:
    if i % 3 == 2:
        return {"id": f"good{i}", "conversations": qa("name a colour .", ["red", "green", "blue"][i % 3 - 2])}
    return {"id": f"good{i}", "image": f"good{i % 4}.png", "conversations": qa()}


@dataclass
class Corpus:
    data: str  # comma-separated data files, as data_path takes them
    images: Path
    records: int
    expected: Counter  # reason -> count, skips and truncated_text
    skipped: int  # records that do not train


def write_corpus(root: Path, good_between: int = 3) -> Corpus:
    images = root / "images"
    images.mkdir(parents=True)
    for name, content in image_files().items():
        (images / name).mkdir() if content is None else (images / name).write_bytes(content)
    records, n = [], 0
    for kind, record, _ in JSON_KINDS:
        if isinstance(record, dict):
            record = {"id": kind, **record}
        records.append(record)
        records += [good(n + k) for k in range(good_between)]
        n += good_between
    lines = []
    for _, line, _ in JSONL_KINDS:
        lines.append(line)
        lines += [json.dumps(good(n + k)).encode() for k in range(good_between)]
        n += good_between
    (root / "corpus.json").write_text(json.dumps(records))
    (root / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected = Counter(reason for _, _, reason in JSON_KINDS + JSONL_KINDS if reason)
    return Corpus(f"{root / 'corpus.json'},{root / 'corpus.jsonl'}", images, len(records) + len(JSONL_KINDS) * (1 + good_between),
                  expected, sum(n for r, n in expected.items() if r != "truncated_text"))
