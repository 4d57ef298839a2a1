"""The tiny LLM's text pretraining: scenes read as soft slots at the image's place; the world's
held-out fine-detail questions: right for their scenes, balanced, never answered by stage-1 captions."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from victor.data.collate import IGNORE, TEMPLATES, expand_images, tokenize_with_labels
from victor.eval.likelihood import run_likelihood
from victor.eval.prompts import SHORT_ANSWER_SUFFIX
from victor.tiny.backbones import save_backbones
from victor.tiny.pretrain import (
    SceneReader,
    collate_scenes,
    pretrain_llm,
    scene_examples,
    scene_slots,
    slot_reader_accuracy,
)
from victor.tiny.scenes import (
    COLOUR_NAMES,
    FINE_TYPES,
    POSITIONS,
    SHAPES,
    SIZES,
    WorldConfig,
)
from victor.tiny.world import (
    WORLD_VERSION,
    WorldPaths,
    build_tokenizer,
    ensure_world,
    generate_world,
    load_scenes,
    world_texts,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("tinyworld")
    generate_world(out, WorldConfig(seed=3, n_train=160, n_val=8))
    tok = build_tokenizer(world_texts(out))
    _, llm = save_backbones(out / "backbones", tok, llm_layers=2)
    return out, AutoTokenizer.from_pretrained(llm), llm


def test_scene_slots_are_row_major_object_words(setup):
    out, tok, _ = setup
    scenes = load_scenes(out)
    for scene in list(scenes.values())[:20]:
        slots = scene_slots(scene, tok)
        assert len(slots) == len(POSITIONS) == 9
        by_region = {o["region"]: o for o in scene["objects"]}
        for region, words in enumerate(slots):
            if region in by_region:
                o = by_region[region]
                assert tok.convert_ids_to_tokens(words) == [o["size"], o["colour"], o["shape"]]
                assert POSITIONS[region] == o["position"]  # row-major, as the visual tokens
            else:
                assert words == []


def test_scene_examples_one_slot_per_image_token_and_answer_labels(setup):
    out, tok, _ = setup
    examples = scene_examples(tok, out)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert len(examples) > 3 * 160  # stage 1 + 1.5 + 2 records (+ told-answer variants)
    assert sum(not e["slots"] for e in examples) > 0 and sum(bool(e["slots"]) for e in examples) > 3 * 150
    for e in examples:
        assert sum(t == image_id for t in e["input_ids"]) == len(e["slots"])
        assert len(e["slots"]) in (0, 9)  # text-only records have none
        supervised = [t for t, lab in zip(e["input_ids"], e["labels"]) if lab != IGNORE]
        assert supervised and supervised[-1] == tok.eos_token_id
        assert all(lab in (IGNORE, t) for t, lab in zip(e["input_ids"], e["labels"]))
    # stage-1 records use the plain template: <s>, the 9 image tokens, then the caption
    first = examples[0]
    assert first["input_ids"][:10] == [tok.bos_token_id] + [image_id] * 9
    assert all(lab == IGNORE for lab in first["labels"][:10]) and first["labels"][10] != IGNORE


def test_scene_reader_puts_word_sums_at_image_positions(setup):
    out, tok, llm = setup
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(llm).eval()
    image_id = tok.convert_tokens_to_ids("<image>")
    batch_examples = scene_examples(tok, out)[:3] + scene_examples(tok, out)[-2:]
    batch = collate_scenes(batch_examples, tok.pad_token_id)
    reader = SceneReader(lm, image_id)
    # reference: a loop that writes each slot's word-embedding sum over its image token
    embed = lm.get_input_embeddings().weight
    ref = embed[batch["input_ids"]].clone()
    for row, e in enumerate(batch_examples):
        positions = [i for i, t in enumerate(e["input_ids"]) if t == image_id]
        for pos, words in zip(positions, e["slots"]):
            ref[row, pos] = embed[words].sum(0) if words else torch.zeros(embed.shape[1])
    with torch.no_grad():
        got = reader(**batch).logits
        want = lm(inputs_embeds=ref, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want)


def test_changing_a_slot_changes_only_what_follows_it(setup):
    out, tok, llm = setup
    lm = AutoModelForCausalLM.from_pretrained(llm).eval()
    image_id = tok.convert_tokens_to_ids("<image>")
    e = scene_examples(tok, out)[5]
    other = dict(e, slots=[s if k != 4 else tok.convert_tokens_to_ids(["large", "red", "star"])
                           for k, s in enumerate(e["slots"])])
    a, b = collate_scenes([e], tok.pad_token_id), collate_scenes([other], tok.pad_token_id)
    reader = SceneReader(lm, image_id)
    with torch.no_grad():
        la, lb = reader(**a).logits[0], reader(**b).logits[0]
    fifth = [i for i, t in enumerate(e["input_ids"]) if t == image_id][4]
    torch.testing.assert_close(la[:fifth], lb[:fifth])
    assert (la[fifth:] - lb[fifth:]).abs().amax() > 1e-3


@pytest.mark.slow
def test_pretraining_teaches_the_llm_to_read_the_slots(setup, tmp_path):
    """After a short pretraining the answers depend on the scene: the loss with each example's
    own slots is clearly lower than with another example's slots."""
    out, tok, llm = setup
    import shutil

    llm_copy = tmp_path / "llm"
    shutil.copytree(llm, llm_copy)
    torch.manual_seed(0)
    pretrain_llm(llm_copy, out, steps=150, batch_size=16, seed=0)
    reader = SceneReader(AutoModelForCausalLM.from_pretrained(llm_copy).eval(), tok.convert_tokens_to_ids("<image>"))
    examples = [e for e in scene_examples(tok, out) if any(e["slots"])][:96]
    batch = collate_scenes(examples, tok.pad_token_id)
    shuffled = dict(batch, slot_words=batch["slot_words"].roll(1, 0))
    with torch.no_grad():
        own, wrong = reader(**batch).loss.item(), reader(**shuffled).loss.item()
    assert own < 0.8 * wrong, (own, wrong)


def test_prepare_world_reuses_matching_backbones_and_rebuilds_others(tmp_path):
    import json

    from victor.tiny.prepare import BACKBONES_FORMAT, prepare_world

    world = WorldConfig(seed=1, n_train=12, n_val=4)
    kw = dict(llm_pretrain_steps=2, vision_pretrain_steps=2)
    _, vision, llm = prepare_world(tmp_path, world, **kw)
    record = tmp_path / "backbones" / "victor_backbones.json"
    assert json.loads(record.read_text())["format"] == BACKBONES_FORMAT
    weights = tmp_path / "backbones" / "llm" / "model.safetensors"
    first = weights.stat().st_mtime_ns
    prepare_world(tmp_path, world, **kw)  # same arguments: reused
    assert weights.stat().st_mtime_ns == first
    prepare_world(tmp_path, world, llm_pretrain_steps=3, vision_pretrain_steps=2)  # other steps: rebuilt
    assert weights.stat().st_mtime_ns != first
    assert json.loads(record.read_text())["llm_pretrain_steps"] == 3
    # backbones without a record (an older victor, or a run killed mid-way) are rebuilt
    record.unlink()
    again = weights.stat().st_mtime_ns
    prepare_world(tmp_path, world, llm_pretrain_steps=3, vision_pretrain_steps=2)
    assert record.exists() and weights.stat().st_mtime_ns != again
    assert not (tmp_path / "backbones.partial").exists()
    assert AutoTokenizer.from_pretrained(llm).convert_tokens_to_ids("<image>") == 4


# ---------------------------------------------------------------------------------- fine-detail questions

@pytest.fixture(scope="module")
def fine_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("fineworld")
    paths = generate_world(out, WorldConfig(seed=5, n_train=30, n_val=120))
    rows = [json.loads(line) for line in paths.fine.read_text().splitlines()]
    return paths, rows, load_scenes(out)


def _find(scene, colour, shape):
    hits = [o for o in scene["objects"] if (o["colour"], o["shape"]) == (colour, shape)]
    assert len(hits) == 1
    return hits[0]


def test_fine_questions_are_right_for_their_scenes(fine_world):
    """Every answer recomputed from the scene's objects: the size from the drawn size in pixels."""
    _, rows, scenes = fine_world
    assert {r["category"] for r in rows} == set(FINE_TYPES) == {"size"}
    sizes = sorted({x["size_px"] for s in scenes.values() for x in s["objects"]})
    assert len(sizes) == 2
    for r in rows:
        scene = scenes[r["image"]]
        q, choices = r["text"], r["choices"]
        assert len(choices) == 2 and len(set(choices)) == 2 and r["answer"] in choices, r
        m = re.fullmatch(r"Is the (\w+) (\w+) (?:small or large|large or small)\?", q)
        assert m, f"unknown fine-detail question {q!r}"
        o = _find(scene, m[1], m[2])
        assert r["answer"] == ("large" if o["size_px"] == sizes[1] else "small")
        assert sorted(choices) == ["large", "small"]
    assert Counter(r["image"] for r in rows).most_common(1)[0][1] == 1  # one question per image


def test_fine_questions_are_balanced(fine_world):
    """Neither choice wins by itself: small and large each answer half the questions (to one), and each
    is named first in about half of them."""
    _, rows, _ = fine_world
    assert len(rows) >= 100
    counts = Counter(r["answer"] for r in rows)
    assert len(counts) == 2 and max(counts.values()) - min(counts.values()) <= 1, counts
    first = sum(" small or large?" in r["text"] for r in rows) / len(rows)
    assert 0.35 < first < 0.65


def test_stage1_captions_never_state_the_fine_details(fine_world):
    """Stage-1 captions name colours and shapes only: no position, size or count word, so what the
    fine-detail questions ask is never in stage-1 supervision (stage 1.5's detailed captions state
    sizes and positions; stage 2 asks sizes of training images)."""
    paths, rows, _ = fine_world
    captions = [rec["conversations"][1]["value"] for rec in json.loads(paths.stage1.read_text())]
    words = Counter(w for c in captions for w in re.findall(r"[\w']+|[^\w\s]", c.lower()))
    assert set(words) <= set(COLOUR_NAMES) | set(SHAPES) | {"a", "an", "and", ",", "."}
    asked = {w for r in rows for w in r["choices"]}
    assert asked == {"small", "large"} and not asked & set(words)
    assert not any(p in c for c in captions for p in ("small", "large", "top", "bottom"))
    detailed = json.loads(paths.stage15.read_text())[0]["conversations"][1]["value"]
    assert any(s in detailed for s in SIZES) and " is at the " in detailed


def test_fine_questions_are_asked_in_training_about_training_images_only(fine_world):
    """Stage 2 asks the same kind of question about training images (so the words are the tokenizer's:
    `world_texts` leaves `val/fine.jsonl` out), never about a held-out image."""
    paths, rows, _ = fine_world
    tok = build_tokenizer(world_texts(paths.root))
    for r in rows:
        for text in (r["text"], *r["choices"]):
            assert tok.unk_token_id not in tok(text, add_special_tokens=False).input_ids, text
    asked = [(rec["image"], turn["value"]) for rec in json.loads(paths.stage2.read_text()) if "image" in rec
             for turn in rec["conversations"][0::2] if re.search(r"(small or large|large or small)\?", turn["value"])]
    assert asked and all(image.startswith("train_") for image, _ in asked)
    assert all(r["image"].startswith("val_") for r in rows)


def test_a_model_that_always_picks_one_choice_scores_half(fine_world):
    """The likelihood run on `val/fine.jsonl` (as the demo's gqa_fine): a scorer that prefers one
    answer word whatever the image gets exactly half the two-way questions; one that reads the
    gold answer gets them all."""
    paths, rows, _ = fine_world
    pixels = {}
    for r in rows:
        with Image.open(paths.images / r["image"]) as im:
            pixels[r["image"]] = np.asarray(im.convert("RGB")).tobytes()
    gold = {(pixels[r["image"]], r["text"]): r["answer"] for r in rows}

    def always(word):
        return lambda images, prompts, conts: [(0.0 if c == word else -1.0, 1) for c in conts]

    def oracle(images, prompts, conts):
        return [(0.0 if gold[np.asarray(i).tobytes(), p.split("\n")[0]] == c else -2.0, 1)
                for i, p, c in zip(images, prompts, conts)]

    for word in SIZES:
        s = run_likelihood("gqa", paths.fine, paths.images, always(word), paths.root / f"eval-{word}", progress=False)
        assert s["tables"]["category"]["size"]["accuracy"] == pytest.approx(0.5, abs=0.5 / len(rows) + 1e-9)
    s = run_likelihood("gqa", paths.fine, paths.images, oracle, paths.root / "eval-oracle", progress=False)
    assert s["main_metric"] == "accuracy" and s["metrics"]["accuracy"] == 1.0 and s["metrics"]["n_scored"] == len(rows)
    record = json.loads((paths.root / "eval-oracle" / "predictions.jsonl").read_text().splitlines()[0])
    assert set(record["loglik"]) == {f"choice:{c}" for c in record["meta"]["choices"]}
    assert record["prediction"] == record["answer"] and record["gold_loglik"] == 0.0


def test_a_world_without_fine_questions_is_rebuilt(tmp_path):
    """Worlds written before `val/fine.jsonl` (meta version 1) are rebuilt by `ensure_world`; the
    rebuilt world's files are the same bytes as a fresh one's."""
    cfg = WorldConfig(seed=2, n_train=8, n_val=6)
    paths = generate_world(tmp_path, cfg)
    before = {p: p.read_bytes() for p in paths.data_files() if p not in (paths.fine, paths.meta)}
    meta = json.loads(paths.meta.read_text())
    assert meta["version"] == WORLD_VERSION == 3 and meta["counts"]["val_fine"] == len(paths.fine.read_text().splitlines())
    paths.fine.unlink()
    paths.meta.write_text(json.dumps(meta | {"version": 1}))
    again = ensure_world(tmp_path, cfg)
    assert again.fine.exists() and json.loads(again.meta.read_text())["version"] == WORLD_VERSION
    assert {p: p.read_bytes() for p in before} == before


def test_slot_reader_accuracy_matches_the_readers_own_loss(setup):
    """The demo's ceiling (`slot_reader_accuracy`: the LLM reading true scene slots, batched and padded)
    picks, per question, the choice whose answer turn `SceneReader` itself gives the lower loss, one
    unpadded example at a time."""
    out, tok, llm = setup
    paths = WorldPaths.at(out)
    rows = [json.loads(line) for line in paths.fine.read_text().splitlines()]
    got = slot_reader_accuracy(llm, out, paths.fine, batch_size=5)
    reader = SceneReader(AutoModelForCausalLM.from_pretrained(llm).eval(), tok.convert_tokens_to_ids("<image>"))
    scenes, right = load_scenes(out), []
    for r in rows:
        losses = []
        for choice in r["choices"]:
            messages = [{"role": "user", "content": f"<image>\n{r['text']}\n{SHORT_ANSWER_SUFFIX}"},
                        {"role": "assistant", "content": choice}]
            ids, labels = tokenize_with_labels(tok, expand_images(TEMPLATES["chat"](tok, messages), 9))
            batch = collate_scenes([{"input_ids": ids, "labels": labels, "slots": scene_slots(scenes[r["image"]], tok)}],
                                   tok.pad_token_id)
            with torch.no_grad():
                losses.append(reader(**batch).loss.item())
        right.append(r["choices"][losses.index(min(losses))] == r["answer"])
    assert set(got) == {"size"} and len(rows) >= 4
    assert got["size"] == pytest.approx(sum(right) / len(right))
