"""Tests of the tiny world (victor/data/world.py): data, layouts, tokenizer, tiny configs."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import base64
import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from victor.data import templates
from victor.eval.prompts import (
    CIRCULAR_OFFSET,
    MC_SUFFIX,
    MMBENCH_COLUMNS,
    SHORT_ANSWER_SUFFIX,
    format_mc_prompt,
)
from victor.tiny import scenes as S
from victor.tiny import texts as T
from victor.tiny import world as W
from victor.tiny.scenes import (
    COLOURS,
    FINE_TYPES,
    NUMBER_WORDS,
    POSITIONS,
    QUESTION_TYPES,
    SHAPES,
    WorldConfig,
)
from victor.tiny.world import build_tokenizer, generate_world, world_texts

IMG = templates.IMAGE_TOKEN
CFG = WorldConfig(seed=0, n_train=40, n_val=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = generate_world(out, CFG)
    return paths


@pytest.fixture(scope="module")
def scenes(world):
    return W.load_scenes(world.root)


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
    save = tmp_path_factory.mktemp("tok")
    t = build_tokenizer(world_texts(world.root), save_dir=save)
    t._victor_save_dir = save
    return t


def _load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _jsonl(p):
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------- oracle
# Answers every open question form the world asks, from the ground-truth scene alone.

def oracle(scene: dict, q: str) -> str:
    objs = scene["objects"]
    q = q.split("\n")[0]
    plural = {v: k for k, v in S.SHAPE_PLURALS.items()}

    def only(pred):
        hits = [o for o in objs if pred(o)]
        assert len(hits) == 1, (q, hits)
        return hits[0]

    if m := re.fullmatch(r"What (?:colour|color) is the object at the (.+)\?", q):
        return only(lambda o: o["position"] == m[1])["colour"]
    if m := re.fullmatch(r"What is the (?:colour|color) of the shape at the (.+)\?", q):
        return only(lambda o: o["position"] == m[1])["colour"]
    if m := re.fullmatch(r"What (?:colour|color) is the (small|large) shape\?", q):
        return only(lambda o: o["size"] == m[1])["colour"]
    if m := re.fullmatch(r"What (?:colour|color) is the (\w+)\?", q):
        return only(lambda o: o["shape"] == m[1])["colour"]
    if m := re.fullmatch(r"What shape is at the (.+)\?", q):
        return only(lambda o: o["position"] == m[1])["shape"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?|Which shape is (\w+)\?", q):
        c = m[1] or m[2]
        return only(lambda o: o["colour"] == c)["shape"]
    if q in ("How many objects are there in the image?", "How many shapes are in the picture?"):
        return NUMBER_WORDS[len(objs)]
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        return NUMBER_WORDS[sum(o["colour"] == m[1] for o in objs)]
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        return NUMBER_WORDS[sum(o["shape"] == plural[m[1]] for o in objs)]
    if m := re.fullmatch(r"(?:Where is|In which part of the image is) the (\w+) (\w+)\?", q):
        return only(lambda o: (o["colour"], o["shape"]) == (m[1], m[2]))["position"]
    if m := re.fullmatch(r"Where is the (\w+)\?", q):
        return only(lambda o: o["shape"] == m[1])["position"]
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:small or large|large or small)\?", q):
        return only(lambda o: (o["colour"], o["shape"]) == (m[1], m[2]))["size"]
    if m := re.fullmatch(r"Is there an object at the (.+)\?", q):
        return "yes" if any(o["position"] == m[1] for o in objs) else "no"
    if m := re.fullmatch(r"Is there an? (\w+) object in the image\?", q):
        return "yes" if any(o["colour"] == m[1] for o in objs) else "no"
    if m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q):
        return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objs) else "no"
    if m := re.fullmatch(r"Is there an? (\w+) in the image\?", q):
        return "yes" if any(o["shape"] == m[1] for o in objs) else "no"
    raise AssertionError(f"unknown question form: {q!r}")


# ---------------------------------------------------------------------------------- determinism

def test_determinism_same_seed_identical_bytes(world, tmp_path):
    again = generate_world(tmp_path / "again", CFG)
    a, b = _all_files(world.root), _all_files(again.root)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.startswith("images/")]) == CFG.n_train + CFG.n_val
    for k in a:
        assert a[k] == b[k], k


def test_different_seed_differs(world, tmp_path):
    other = generate_world(tmp_path / "other", WorldConfig(seed=1, n_train=40, n_val=20))
    assert other.stage1.read_bytes() != world.stage1.read_bytes()
    assert other.stage2.read_bytes() != world.stage2.read_bytes()
    same = sum((other.images / f"train_{i:05d}.png").read_bytes() == (world.images / f"train_{i:05d}.png").read_bytes()
               for i in range(40))
    assert same == 0


def test_train_val_disjoint(world):
    names = sorted(p.name for p in world.images.iterdir())
    train = [n for n in names if n.startswith("train_")]
    val = [n for n in names if n.startswith("val_")]
    assert train == [f"train_{i:05d}.png" for i in range(40)]
    assert val == [f"val_{i:05d}.png" for i in range(20)]
    h = lambda n: hashlib.sha1(np.asarray(Image.open(world.images / n)).tobytes()).hexdigest()  # noqa: E731
    assert not ({h(n) for n in train} & {h(n) for n in val})
    # training files only reference train images; held-out files only val images
    for p in (world.stage1, world.stage15, world.stage2):
        assert all(r["image"].startswith("train_") for r in _load(p) if "image" in r)
    assert all(r["image"].startswith("val_") for r in _load(world.val_qa))
    for p in world.pope.values():
        assert all(r["image"].startswith("val_") for r in _jsonl(p))


# ---------------------------------------------------------------------------------- schema

def _check_conversation_record(rec, images_dir: Path, with_image: bool):
    convs = rec["conversations"]
    assert len(convs) >= 2 and len(convs) % 2 == 0
    assert [c["from"] for c in convs] == ["human", "gpt"] * (len(convs) // 2)
    assert all(isinstance(c["value"], str) and c["value"].strip() for c in convs)
    if with_image:
        assert (images_dir / rec["image"]).is_file()
        assert rec["image"] == rec["id"] + ".png"
        first = convs[0]["value"]
        assert first.count(IMG) == 1
        assert first.startswith(IMG) or first.endswith(IMG)
        assert all(IMG not in c["value"] for c in convs[1:])
    else:
        assert "image" not in rec
        assert all(IMG not in c["value"] for c in convs)


def test_stage1_schema_and_captions(world, scenes):
    recs = _load(world.stage1)
    assert len(recs) == CFG.n_train
    for rec in recs:
        _check_conversation_record(rec, world.images, with_image=True)
        assert rec["conversations"][0]["value"] == IMG
        cap = rec["conversations"][1]["value"]
        objs = scenes[rec["image"]]["objects"]
        assert cap.endswith(".")
        for o in objs:
            assert f"{o['colour']} {o['shape']}" in cap
        assert cap.count(" and ") == (1 if len(objs) > 1 else 0)


def test_stage15_schema_and_detailed_captions(world, scenes):
    recs = _load(world.stage15)
    assert len(recs) == CFG.n_train
    placements = Counter()
    for rec in recs:
        _check_conversation_record(rec, world.images, with_image=True)
        human = rec["conversations"][0]["value"]
        placements["first" if human.startswith(IMG) else "last"] += 1
        assert human.replace(IMG, "").strip() in S.DETAIL_PROMPTS
        cap = rec["conversations"][1]["value"]
        scene = scenes[rec["image"]]
        objs = scene["objects"]
        m = re.match(r"there (?:is|are) (\w+) objects? \.", cap)
        assert m and m[1] == NUMBER_WORDS[len(objs)]
        described = re.findall(r"an? (small|large) (\w+) (\w+) is at the ([a-z ]+?) \.", cap)
        assert described == [(o["size"], o["colour"], o["shape"], o["position"]) for o in objs]
        bg = scene["background"]
        assert cap.endswith(T.background_sentence(scene))
        assert ("thin lines" in cap) == (bg["lines"] > 0) and ("small dots" in cap) == (bg["dots"] > 0)
    assert placements["first"] > 0 and placements["last"] > 0


def test_stage2_schema_and_answers(world, scenes):
    recs = _load(world.stage2)
    meta = _load(world.meta)
    n_text = meta["counts"]["stage2_text_only"]
    assert n_text == round(CFG.n_train * 0.05 / 0.95) and n_text >= 1
    assert len(recs) == CFG.n_train + n_text
    assert len({r["id"] for r in recs}) == len(recs)
    kinds = Counter()
    for rec in recs:
        with_image = "image" in rec
        _check_conversation_record(rec, world.images, with_image=with_image)
        convs = rec["conversations"]
        assert len(rec["question_types"]) == len(convs) // 2
        assert set(rec["question_types"]) <= set(QUESTION_TYPES) | set(FINE_TYPES)
        if "size" in rec["question_types"]:  # a size record asks the size of every object, once each
            kinds["size"] += 1
            assert rec["question_types"] == ["size"] * len(scenes[rec["image"]]["objects"])
        if not with_image:
            kinds["text"] += 1
            continue
        kinds["multi" if len(convs) > 2 else "single"] += 1
        scene = scenes[rec["image"]]
        for h, g in zip(convs[0::2], convs[1::2]):
            q = h["value"].replace(IMG, "").strip()
            if q.endswith(MC_SUFFIX):
                kinds["mc"] += 1
                lines = q.split("\n")
                assert lines[-1] == MC_SUFFIX
                opts = [ln for ln in lines if re.match(r"[A-D]\. ", ln)]
                letters = [ln[0] for ln in opts]
                assert letters == list("ABCD")[: len(letters)] and len(letters) in (2, 4)
                assert g["value"] in letters
            else:
                assert q.endswith("\n" + SHORT_ANSWER_SUFFIX)
                kinds["open"] += 1
                assert g["value"] == oracle(scene, q), q
    assert kinds["text"] == n_text
    assert kinds["multi"] > 0 and kinds["mc"] > 0 and kinds["open"] > 0 and kinds["size"] > 0


def test_val_qa_balanced_and_correct(world, scenes):
    qa = _load(world.val_qa)
    assert len(qa) == CFG.n_val
    assert Counter(r["question_type"] for r in qa) == {t: CFG.n_val // 5 for t in QUESTION_TYPES}
    assert len({r["id"] for r in qa}) == len(qa)
    for r in qa:
        assert set(r) >= {"id", "image", "question", "answer", "question_type"}
        assert (world.images / r["image"]).is_file()
        assert IMG not in r["question"]
        assert r["prompt"] == r["question"] + "\n" + SHORT_ANSWER_SUFFIX
        assert r["answer"] == oracle(scenes[r["image"]], r["question"]), r
        if r["question_type"] == "position":
            assert r["answer"] in POSITIONS
        if r["question_type"] == "count":
            assert r["answer"] in NUMBER_WORDS
    exist = Counter(r["answer"] for r in qa if r["question_type"] == "existence")
    assert exist["yes"] == exist["no"] == CFG.n_val // 10


# ---------------------------------------------------------------------------------- pixels

def test_object_colours_at_their_positions(world, scenes):
    S = CFG.image_size
    for name, scene in scenes.items():
        arr = np.asarray(Image.open(world.images / name).convert("RGB")).astype(int)
        assert arr.shape == (S, S, 3)
        covered = np.zeros((S, S), bool)
        for o in scene["objects"]:
            cx, cy = o["center"]
            # the object sits in the grid cell its position names
            row, col = divmod(POSITIONS.index(o["position"]), 3)
            assert col * S / 3 <= cx < (col + 1) * S / 3 and row * S / 3 <= cy < (row + 1) * S / 3
            px = arr[int(cy), int(cx)]
            assert np.abs(px - np.array(COLOURS[o["colour"]])).max() <= 2, (name, o, px)
            r = o["size_px"] / 2 + 1.5
            covered[max(0, int(cy - r)): int(cy + r) + 1, max(0, int(cx - r)): int(cx + r) + 1] = True
        assert len({o["region"] for o in scene["objects"]}) == len(scene["objects"])
        # no palette-coloured pixel outside the objects: clutter never looks like an object
        for rgb in COLOURS.values():
            close = np.abs(arr - np.array(rgb)).max(-1) <= 30
            assert not (close & ~covered).any(), (name, rgb)


def test_cluttered_background_vs_clean(tmp_path, world, scenes):
    # with clutter the background varies (noise / gradient / marks)
    name = "train_00000.png"
    arr = np.asarray(Image.open(world.images / name)).astype(int)
    assert arr[:, :, 0].std() > 3
    assert any(s["background"]["lines"] + s["background"]["dots"] > 0 for s in scenes.values())
    clean = generate_world(tmp_path / "clean", WorldConfig(seed=3, n_train=8, n_val=4, clutter=0.0))
    cs = W.load_scenes(clean.root)
    for rec in _load(clean.stage15):
        assert rec["conversations"][1]["value"].endswith("the background is plain .")
    for n, s in cs.items():
        a = np.asarray(Image.open(clean.images / n)).reshape(-1, 3)
        # background is one flat colour: the most common pixel covers everything outside objects
        vals, counts = np.unique(a, axis=0, return_counts=True)
        area = sum(o["size_px"] ** 2 for o in s["objects"])
        assert counts.max() >= a.shape[0] - area


def test_image_size_configurable(tmp_path):
    p = generate_world(tmp_path / "big", WorldConfig(seed=5, n_train=3, n_val=2, image_size=96))
    assert Image.open(p.images / "train_00000.png").size == (96, 96)
    s = W.load_scenes(p.root)
    assert {o["size_px"] for sc in s.values() for o in sc["objects"]} <= {round(0.32 * 96), round(0.22 * 96)}


# ---------------------------------------------------------------------------------- MMBench

def test_mmbench_tsv(world, scenes):
    with open(world.mmbench, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert reader.fieldnames == MMBENCH_COLUMNS
        rows = list(reader)
    base = [r for r in rows if int(r["index"]) < CIRCULAR_OFFSET]
    assert [int(r["index"]) for r in base] == list(range(CFG.n_val))
    assert Counter(r["category"] for r in base) == {t: CFG.n_val // 5 for t in QUESTION_TYPES}
    by_index = {int(r["index"]): r for r in rows}
    four = [r for r in base if r["D"]]
    two = [r for r in base if not r["C"]]
    assert len(four) + len(two) == len(base) and two  # existence yes/no rows have 2 options
    assert len(rows) == len(base) + 3 * len(four)
    for r in base:
        i = int(r["index"])
        assert r["split"] == "dev" and r["l2-category"] in ("perception", "reasoning")
        assert r["answer"] in "ABCD" and r[r["answer"]]
        png = base64.b64decode(r["image"])
        assert png == (world.images / f"val_{i:05d}.png").read_bytes()
        scene = scenes[f"val_{i:05d}.png"]
        correct = r[r["answer"]]
        if r["category"] == "existence" and r["D"]:
            present = {f"{o['colour']} {o['shape']}" for o in scene["objects"]}
            assert [r[x] in present for x in "ABCD"].count(True) == 1 and correct in present
        else:
            assert correct == oracle(scene, r["question"]), r["question"]
        opts = [r[x] for x in "ABCD" if r[x]]
        assert len(set(opts)) == len(opts)
        if r["D"]:
            for k in (1, 2, 3):
                c = by_index[i + k * CIRCULAR_OFFSET]
                assert c["question"] == r["question"] and c["image"] == r["image"]
                assert [c[x] for x in "ABCD"] == opts[k:] + opts[:k]
                assert c[c["answer"]] == correct
        else:
            assert all(i + k * CIRCULAR_OFFSET not in by_index for k in (1, 2, 3))


def test_mc_prompt_is_llava_mmbench_format():
    p = format_mc_prompt("What colour is the circle?", ["red", "blue", "green", "white"], hint="A hint.")
    assert p == ("A hint.\nWhat colour is the circle?\nA. red\nB. blue\nC. green\nD. white\n"
                 "Answer with the option's letter from the given choices directly.")
    assert format_mc_prompt("Q?", ["yes", "no"]) == "Q?\nA. yes\nB. no\n" + MC_SUFFIX


# ---------------------------------------------------------------------------------- POPE

def test_pope_files(world, scenes):
    meta = _load(world.meta)
    freq = {tuple(k.split(" ")): v for k, v in meta["object_frequency"].items()}
    files = {k: _jsonl(p) for k, p in world.pope.items()}
    assert set(files) == {"random", "popular", "adversarial"}
    for kind, rows in files.items():
        assert world.pope[kind].name == f"coco_pope_{kind}.json"
        labels = Counter(r["label"] for r in rows)
        assert labels["yes"] == labels["no"] > 0 and set(labels) == {"yes", "no"}
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        per_image = {}
        for r in rows:
            assert set(r) == {"question_id", "image", "text", "label"}
            assert (world.images / r["image"]).is_file()
            m = re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", r["text"])
            assert m, r
            scene = scenes[r["image"]]
            present = {(o["colour"], o["shape"]) for o in scene["objects"]}
            pair = (m[1], m[2])
            assert (pair in present) == (r["label"] == "yes")
            per_image.setdefault(r["image"], []).append((pair, r["label"]))
            if r["label"] == "no" and kind == "adversarial":
                assert any(pair[0] == c or pair[1] == s for c, s in present)
        assert len(per_image) == CFG.n_val
        for img, items in per_image.items():
            assert Counter(label for _, label in items)["yes"] == len(scenes[img]["objects"])
            assert len({p for p, _ in items}) == len(items)
            if kind == "popular":
                present = {(o["colour"], o["shape"]) for o in scenes[img]["objects"]}
                negs = [p for p, label in items if label == "no"]
                absent = [p for p in freq if p not in present]
                top = sorted(freq[p] for p in absent)[::-1][: len(negs)]
                assert sorted((freq[p] for p in negs), reverse=True) == top
    # the positives are shared; the files differ in their negatives
    yes = {k: [(r["image"], r["text"]) for r in v if r["label"] == "yes"] for k, v in files.items()}
    assert yes["random"] == yes["popular"] == yes["adversarial"]
    assert [r["text"] for r in files["random"]] != [r["text"] for r in files["adversarial"]]


def test_meta(world):
    meta = _load(world.meta)
    assert meta["config"] == {**CFG.__dict__}
    assert WorldConfig.from_dict(meta["config"]) == CFG
    assert meta["vocab"]["colours"] == list(COLOURS) and meta["vocab"]["shapes"] == SHAPES
    assert meta["vocab"]["positions"] == POSITIONS
    assert meta["counts"]["stage1"] == CFG.n_train and meta["counts"]["val_qa"] == CFG.n_val
    for rel in [meta["files"][k] for k in ("stage1", "stage15", "stage2", "val_qa", "mmbench", "scenes")]:
        assert (world.root / rel).is_file()
    assert all((world.root / rel).is_file() for rel in meta["files"]["pope"].values())
    assert str(world.root) not in world.meta.read_text()  # no absolute paths: bytes stay identical
    # ensure_world reuses a matching world (no rewrite)
    mtime = world.stage1.stat().st_mtime_ns
    assert W.ensure_world(world.root, CFG).stage1 == world.stage1
    assert world.stage1.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------- tokenizer

def test_tokenizer_special_tokens_and_image(tok):
    assert [tok.convert_tokens_to_ids(t) for t in S.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == ("<pad>", "<unk>", "<s>", "</s>")
    assert tok.model_max_length == 1024
    assert tok.chat_template == templates.VICUNA_CHAT_TEMPLATE
    ids = tok("<image><image>", add_special_tokens=False).input_ids
    assert ids == [S.IMAGE_ID, S.IMAGE_ID]
    assert tok("<image><image>").input_ids == [S.BOS_ID, S.IMAGE_ID, S.IMAGE_ID]
    assert tok.decode(ids) == "<image><image>"
    enc = tok("<image><image>", add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"] == [(0, 7), (7, 14)]
    ids = tok("<image>\nWhat colour is it?", add_special_tokens=False).input_ids
    assert ids[0] == S.IMAGE_ID and ids.count(S.IMAGE_ID) == 1 and S.UNK_ID not in ids


def test_tokenizer_template_words_known(tok):
    for text in ("USER:", "ASSISTANT:", templates.VICUNA_SYSTEM, templates.TEMPLATE_TEXT,
                 "A B C D a b c d 0 1 2 3 4 5 6 7 8 9", SHORT_ANSWER_SUFFIX, MC_SUFFIX):
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids and S.UNK_ID not in ids, text
    assert tok.convert_ids_to_tokens(tok("USER:", add_special_tokens=False).input_ids) == ["user", ":"]
    assert tok("qwertyuiop", add_special_tokens=False).input_ids == [S.UNK_ID]


def test_tokenizer_covers_world_and_offsets(tok, world):
    n = 0
    for t in world_texts(world.root):
        ids = tok(t, add_special_tokens=False).input_ids
        assert S.UNK_ID not in ids, t
        n += 1
    assert n > 5 * CFG.n_train
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the star?"}]},
            {"role": "assistant", "content": "red"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == templates.VICUNA_SYSTEM + " USER: <image>\nWhat colour is the star? ASSISTANT: red</s>"
    enc = tok(text, return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(enc.input_ids)
    assert S.UNK_ID not in enc.input_ids and toks.count("<image>") == 1 and toks[-1] == "</s>"
    # offsets point back at the original characters (case preserved)
    for tid, (s, e) in zip(enc.input_ids[1:], enc["offset_mapping"][1:]):
        assert text[s:e].lower() == tok.convert_ids_to_tokens(tid)
    i_red = toks.index("red")
    s, e = enc["offset_mapping"][i_red]
    assert text[s:e] == "red"


def test_tokenizer_save_reload_identical(tok):
    from transformers import AutoTokenizer

    t2 = AutoTokenizer.from_pretrained(str(tok._victor_save_dir))
    samples = [templates.TEMPLATE_TEXT, "<image>\nIs there a red circle in the image?\n" + SHORT_ANSWER_SUFFIX,
               "there are two objects . a large red circle is at the top left .", "<image><image></s>", "B"]
    for s in samples:
        assert t2(s).input_ids == tok(s).input_ids
        assert t2(s, return_offsets_mapping=True)["offset_mapping"] == tok(s, return_offsets_mapping=True)["offset_mapping"]
    assert len(t2) == len(tok)
    assert t2.chat_template == tok.chat_template
    assert (t2.pad_token_id, t2.bos_token_id, t2.eos_token_id, t2.unk_token_id) == (0, 2, 3, 1)
    assert t2.model_max_length == 1024
    batch = t2(["a red circle", "<image> a"], padding=True)
    a_id = t2.convert_tokens_to_ids("a")
    assert batch.input_ids[1] == [S.BOS_ID, S.IMAGE_ID, a_id, S.PAD_ID]  # right padding
    assert batch.attention_mask[1] == [1, 1, 1, 0]


def test_build_tokenizer_deterministic(world):
    a = build_tokenizer(world_texts(world.root))
    b = build_tokenizer(world_texts(world.root))
    assert a.get_vocab() == b.get_vocab()
