"""Record parsing: every way a record can be wrong is a reasoned skip naming file, id and field."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from victor.data.collate import LlavaCollator
from victor.data.llava import (
    BrokenLine,
    DataFormatError,
    LlavaDataset,
    RecordError,
    Sample,
    parse_record,
    read_entries,
)
from victor.data.skips import KEPT, REASONS, Skipped
from victor.data.templates import IMAGE_TOKEN


def turn(who, value):
    return {"from": who, "value": value}


QA = [turn("human", "<image>\nwhat ?"), turn("gpt", "red")]
# (record, reason, field, words the message must contain)
BROKEN = [
    (5, "bad_record", "record", "expected a JSON object, got int 5"),
    ({"id": [1], "conversations": QA}, "bad_record", "id", "expected a string or a number, got list [1]"),
    ({"id": "a"}, "bad_record", "conversations", "expected a non-empty list of turns, missing"),
    ({"id": "a", "conversations": "hi"}, "bad_record", "conversations", "got str 'hi'"),
    ({"id": "a", "conversations": []}, "bad_record", "conversations", "got list []"),
    ({"id": "a", "conversations": ["human"]}, "bad_record", "conversations[0]", "expected an object with 'from'"),
    ({"id": "a", "conversations": [{"from": ["human"], "value": "x"}]}, "bad_record", "conversations[0].from",
     "got list ['human']"),
    ({"id": "a", "conversations": [turn("human", "x"), turn("bot", "y")]}, "bad_record", "conversations[1].from",
     "got str 'bot'"),
    ({"id": "a", "conversations": [turn("human", "x"), turn("gpt", 5)]}, "bad_record", "conversations[1].value",
     "expected a string, got int 5"),
    ({"id": "a", "conversations": [turn("human", None), turn("gpt", "y")]}, "bad_record", "conversations[0].value",
     "got NoneType None"),
    ({"id": "a", "image": 5, "conversations": QA}, "bad_record", "image", "expected a path or a list of paths, got int 5"),
    ({"id": "a", "image": "", "conversations": QA}, "bad_record", "image", "expected a non-empty path string"),
    ({"id": "a", "image": ["a.png", 7], "conversations": QA}, "bad_record", "image[1]", "got int 7"),
    ({"id": "a", "image": "a.png", "conversations": [turn("gpt", "a red image")]}, "turn_order",
     "conversations[0].from", "expected a human turn, got gpt"),
    ({"id": "a", "conversations": [turn("gpt", "hello"), *QA]}, "turn_order", "conversations[0].from",
     "expected a human turn, got gpt"),
    ({"id": "a", "conversations": [turn("human", "x"), *QA]}, "turn_order", "conversations[1].from",
     "expected a gpt turn, got human"),
    ({"id": "a", "conversations": [*QA, turn("human", "and ?")]}, "turn_order", "conversations[2]",
     "the last human turn has no gpt answer"),
    ({"id": "a", "conversations": [*QA, turn("system", "be brief"), *QA[1:]]}, "turn_order", "conversations[2].from",
     "expected a human turn, got system"),
    ({"id": "a", "conversations": [turn("human", "hi")]}, "no_answer", "conversations", "no 'gpt' turn"),
    ({"id": "a", "conversations": [turn("human", "x"), turn("gpt", " \n")]}, "empty_answer",
     "conversations[1].value", "the gpt answer is empty"),
    ({"id": "a", "image": "a.png", "conversations": [turn("human", "<image><image>"), turn("gpt", "x")]},
     "image_marker_mismatch", "conversations", "2 '<image>' tags but 1 images"),
    ({"id": "a", "conversations": QA}, "image_marker_mismatch", "conversations", "1 '<image>' tags but 0 images"),
    ({"id": "a", "image": "a.png", "conversations": [turn("human", "x"), turn("gpt", "<image>")]},
     "image_marker_misplaced", "conversations[1].value", "'<image>' in a gpt turn"),
    ({"id": "a", "image": "a.png", "conversations": [turn("system", "<image>"), *QA]},
     "image_marker_misplaced", "conversations[0].value", "'<image>' in a system turn"),
    (BrokenLine("not valid JSON (Expecting value, column 3)"), "bad_json", "line", "not valid JSON"),
]


@pytest.mark.parametrize("record,reason,field,words", BROKEN, ids=[f"{b[1]}-{i}" for i, b in enumerate(BROKEN)])
def test_each_broken_record_has_its_reason_field_and_message(record, reason, field, words):
    with pytest.raises(RecordError) as info:
        parse_record(record, "data.json[7]")
    err = info.value
    assert (err.reason, err.skip.field) == (reason, field)
    message = str(err)
    assert message.startswith("data.json[7]") and f"[{reason}] {field}: " in message and words in message, message
    if isinstance(record, dict) and record.get("id") == "a":
        assert "(id 'a')" in message
    assert isinstance(err, DataFormatError)  # callers that caught the old error still do


def test_valid_shapes_parse():
    rid, messages, images = parse_record({"id": 3, "image": ["a.png", "b.png"], "conversations": [
        turn("system", "be brief"), turn("human", "compare"), turn("gpt", "same"),
        turn("human", "sure ?"), turn("gpt", "yes")]}, "f[0]")
    assert rid == "3" and images == ["a.png", "b.png"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "<image><image>\ncompare"  # no marker: images go before the first human turn
    rid, messages, images = parse_record({"image": None, "conversations": [turn("user", "hi"), turn("assistant", "x")]},
                                         "f[1]")
    assert (rid, images) == ("f[1]", [])


def write(path, text: bytes):
    path.write_bytes(text)
    return path


def test_file_level_errors_name_the_file(tmp_path):
    good = json.dumps({"id": "ok", "conversations": [turn("human", "hi"), turn("gpt", "x")]})
    with pytest.raises(DataFormatError, match=r"bad\.json:1: not valid UTF-8 \(byte 12 of the file"):
        read_entries(write(tmp_path / "bad.json", b'[{"id": "caf\xe9", "conversations": []}]'))
    with pytest.raises(DataFormatError, match=r"str\.json: expected a list of LLaVA records.*got a JSON str"):
        read_entries(write(tmp_path / "str.json", b'"hello"'))
    with pytest.raises(DataFormatError, match=r"none\.json: no such data file"):
        read_entries(tmp_path / "none.json")
    # a byte-order mark is not an error
    assert len(read_entries(write(tmp_path / "bom.json", b"\xef\xbb\xbf[" + good.encode() + b"]"))) == 1


def test_broken_jsonl_lines_are_skips_that_name_their_line(tmp_path):
    good = json.dumps({"id": "ok", "conversations": [turn("human", "hi"), turn("gpt", "x")]}).encode()
    path = write(tmp_path / "d.jsonl", b"\n".join([good, b'{"id": "half", ', good, b'{"id": "caf\xe9"}', b"", b"[1, 2]"]))
    ds = LlavaDataset(str(path))
    got = [ds[i] for i in range(len(ds))]
    assert [type(x).__name__ for x in got] == ["Sample", "Skipped", "Sample", "Skipped", "Skipped"]
    assert str(got[1]).startswith(f"{path}:2 [bad_json] line: not valid JSON")
    assert str(got[3]).startswith(f"{path}:4 [bad_json] line: not valid UTF-8")
    assert str(got[4]) == f"{path}:6 [bad_record] record: expected a JSON object, got list [1, 2]"
    assert got[2].where == f"{path}:3" and got[2].index == 2
    assert dict(ds.skipped) == {"bad_json": 2, "bad_record": 1}


def test_dataset_never_raises_and_names_the_image(tmp_path, caplog):
    (tmp_path / "d.json").write_text(json.dumps([{"id": "cat", "image": "cat.png", "conversations": QA}]))
    ds = LlavaDataset(str(tmp_path / "d.json"), tmp_path / "img")
    skip = ds[0]
    assert isinstance(skip, Skipped) and skip.reason == "missing_image" and skip.images == ()
    assert str(skip) == f"{tmp_path / 'd.json'}[0] (id 'cat') [missing_image] image: {tmp_path / 'img' / 'cat.png'}: no such file"
    assert f"skipping {skip}" in caplog.text
    with pytest.raises(IndexError):  # the end of the data is still an IndexError
        ds[1]


def test_skip_warnings_are_rate_limited(tmp_path, caplog):
    records = [{"id": str(i), "conversations": [turn("human", "hi")]} for i in range(2500)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    ds = LlavaDataset(str(tmp_path / "d.json"))
    caplog.clear()
    for i in range(len(ds)):
        ds[i]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 + 2  # the first 5, then the 1000th and the 2000th
    assert "further 'no_answer' events are logged every 1000th" in lines[4]
    assert lines[5].endswith("(1000 'no_answer' events so far)") and "(id '999')" in lines[5]
    assert ds.skipped == {"no_answer": 2500}


# -- property tests ----------------------------------------------------------------------------
KEYS = st.sampled_from(["id", "image", "conversations", "from", "value", "x"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                       max_leaves=12)
TEXT = st.lists(st.sampled_from(["a", " ", "red", "<image>", "\n", "é", "{{", "</s>", "?"]) | st.text(max_size=3),
               max_size=6).map("".join)
GOOD_TURN = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "user", "assistant", "bot"]),
                                   "value": TEXT})
PAIRS = st.lists(st.tuples(TEXT, TEXT.map(lambda a: a or "ok")), min_size=1, max_size=3).map(
    lambda qa: [t for q, a in qa for t in (turn("human", q), turn("gpt", a))])
CONVERSATIONS = PAIRS | PAIRS | st.lists(GOOD_TURN | GOOD_TURN | JSONISH, max_size=5) | JSONISH
PATHS = st.sampled_from(["a.png", "b.png"])
IMAGE = st.one_of(st.none(), PATHS, PATHS, st.lists(PATHS, max_size=3), JSONISH)
ID = st.text(max_size=4) | st.integers() | JSONISH
STRUCTURED = st.fixed_dictionaries({"conversations": CONVERSATIONS}, optional={"id": ID, "image": IMAGE})
RECORD = st.one_of(STRUCTURED, STRUCTURED, STRUCTURED, JSONISH)


@settings(max_examples=400, deadline=None)
@given(RECORD)
def test_any_record_parses_or_is_a_reasoned_skip(record):
    try:
        rid, messages, images = parse_record(record, "f.json[0]")
    except RecordError as err:
        assert err.reason in REASONS and str(err).startswith("f.json[0]")
        return
    assert isinstance(rid, str) and all(isinstance(p, str) and p for p in images)
    assert sum(m["content"].count(IMAGE_TOKEN) for m in messages) == len(images)
    roles = [m["role"] for m in messages if m["role"] != "system"]
    assert roles[::2] == ["user"] * len(roles[::2]) and roles[1::2] == ["assistant"] * len(roles[1::2])
    assert roles[-1] == "assistant"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=RECORD)
def test_any_record_through_dataset_and_collator_never_raises(record, tiny_llava, tmp_path_factory):
    llava, processor = tiny_llava
    root = tmp_path_factory.getbasetemp() / "fuzz-images"
    root.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "a.png")  # b.png is missing
    (root / "d.json").write_text(json.dumps([{"conversations": QA, "image": "a.png"}]))
    ds = LlavaDataset(str(root / "d.json"), root)
    ds.records = [("f.json[0]", record)]
    collator = LlavaCollator(processor, llava.config.image_seq_length, "chat", max_length=40, batch_stats=True)
    item = ds[0]
    assert isinstance(item, (Sample, Skipped))
    batch = collator([item])
    stats = batch["data_stats"]
    assert stats["samples"] == 1 and set(stats["reasons"]) <= set(REASONS) | set(KEPT)
    skipped = sum(n for r, n in stats["reasons"].items() if r not in KEPT)
    assert batch["input_ids"].shape[0] == 1 - skipped
